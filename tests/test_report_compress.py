"""The report's compression section: the trade-off rows ``hwlm compress`` measured, as a table and a
speed-versus-quality scatter, read from the compressed runs' ``compress.json``; what is missing is said.

The compressed runs are made by the real ``compress`` on ``small_run`` (compress_fixtures.py); the
report's numbers are checked against the rows each ``compress.json`` holds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hwlm.bench.energy import EnergyMeter
from hwlm.cli import main
from hwlm.compress import CompressConfig, compress
from hwlm.errors import DataError
from hwlm.report import ReportConfig, collect_inputs, report
from hwlm.report.analysis import method_text

from compress_fixtures import TABLE


def _section(html: str, sec: str = "compress") -> str:
    part = html[html.index(f'<section id="{sec}"'):]
    return part[:part.index("</section>")]


def _rows(part: str) -> list[list[str]]:
    body = part[part.index("<tbody>"):part.index("</tbody>")]
    rows = []
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", body, flags=re.S):
        rows.append([re.sub(r"<[^>]+>", "", td).strip() for td in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)])
    return rows


@pytest.fixture(scope="module")
def compressed(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compressed")
    out = {"w8a8": root / "w8a8", "w8a16": root / "w8a16"}
    compress(CompressConfig(run=small_run, method="int8", precision="w8a8", out=out["w8a8"], **TABLE),
             energy_meter=lambda kind: EnergyMeter(kind, "estimate"))
    compress(CompressConfig(run=small_run, method="int8", precision="w8a16", out=out["w8a16"], **TABLE))
    return out


@pytest.mark.slow
def test_the_section_holds_each_method_and_one_original(small_run: Path, compressed: dict[str, Path],
                                                         tmp_path: Path) -> None:
    runs = [small_run, compressed["w8a8"], compressed["w8a16"]]
    html = report(ReportConfig(runs=runs, out=tmp_path / "r.html")).read_text()
    part = _section(html)
    assert part.count("<svg") == 1 and "Produce it with" not in part
    rows = _rows(part)
    assert [r[0] for r in rows] == ["original (fp32)", "int8 w8a8", "int8 w8a16"]  # the shared original once
    assert rows[0][1] == "original" and rows[1][1] == "w8a8" and rows[2][1] == "w8a16"
    for row, run in zip(rows[1:], ("w8a8", "w8a16")):
        rec = json.loads((compressed[run] / "compress.json").read_text())
        orig, mine = rec["table"]
        assert row[2] == f"{mine['ppl']:.4g}" and row[3] == f"{mine['ppl_delta_pct']:+.2f}%"
        assert row[7] == f"{mine['tok_s_b1']:,.0f}" and row[8] == f"{mine['tok_s_b2']:,.0f}"  # TABLE: batches 1, 2
        assert row[-1] == f"{mine['tok_s_b1'] / orig['tok_s_b1']:.2f}x"  # against its own timing of the original
        assert method_text(mine["energy_source"]) in row[-2] or mine["energy_j_per_token"] is None
        assert re.search(r"measured|estimate", row[-2])  # energy says how it was obtained, or that it was not
    assert rows[2][-2] == "n/a not measured"  # w8a16 was compressed without a meter
    assert "original (fp32)</text>" in part and "int8 w8a16</text>" in part  # the scatter's legend, SVG text
    assert "load average" in part  # the timing's context from compress.json's measured_on
    # the training run still feeds the other sections, and the compressed ones are listed as inputs
    assert "Produce it with" not in _section(html, "loss")
    assert f"compressed run {compressed['w8a8']}" in _section(html, "inputs")


def test_no_compressed_run_says_which_command_makes_one(tmp_path: Path) -> None:
    html = report(ReportConfig(out=tmp_path / "r.html")).read_text()
    part = _section(html)
    assert "No compressed run was given." in part and "hwlm compress --run" in part and "<svg" not in part


def _fake_compressed(folder: Path, **changes: object) -> Path:
    folder.mkdir(parents=True)
    doc = {"version": 1, "kind": "hwlm-compress", "method": "int8", "precision": "w8a8",
           "source": {"run": "runs/train", "checkpoint": "runs/train/checkpoints/step-0000010", "step": 10}}
    doc.update(changes)
    (folder / "compress.json").write_text(json.dumps(doc))
    return folder


def test_a_run_compressed_without_the_table_is_named(tmp_path: Path) -> None:
    run = _fake_compressed(tmp_path / "int8")  # what `hwlm compress --no-table` records: no "table"
    part = _section(report(ReportConfig(runs=[run], out=tmp_path / "r.html")).read_text())
    assert "hold no trade-off rows" in part and "--no-table" in part


def test_a_damaged_compress_record_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_compressed(tmp_path / "int8", table=[{"ppl": 3.0}])  # rows without names
    with pytest.raises(DataError, match=r"compress\.json has a damaged 'table'"):
        collect_inputs([run], [])
    (run / "compress.json").write_text(json.dumps({"kind": "hwlm-compress", "version": 7}))
    code = main(["report", "--run", str(run), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "has version 7; this hwlm reads version 1" in err
    assert not (tmp_path / "r.html").exists()
