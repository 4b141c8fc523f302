"""Tests for hwlm.bench.records and hwlm.bench.compare: spread statistics, atomic round trip, strict loading."""

from __future__ import annotations

import json
import statistics

import pytest

from hwlm.bench.compare import compare_files, format_comparison
from hwlm.bench.records import RECORD_VERSION, default_out, load_record, make_record, spread, write_record
from hwlm.cli import main
from hwlm.errors import DataError

MACHINE = {"cpu": {"model": "Test CPU"}, "gpus": []}


def _record(benchmark="peak", **summary):
    return make_record(benchmark, {"device": "cpu"}, [{"name": "x"}], summary, ["tf32: skipped"], machine=MACHINE)


def test_spread_matches_reference_statistics():
    vals = [5.0, 1.0, 4.0, 2.0, 3.0, 100.0]
    s = spread(vals)
    assert s["count"] == 6 and s["min"] == 1.0 and s["max"] == 100.0
    assert s["median"] == statistics.median(vals)
    q = statistics.quantiles(vals, n=4, method="inclusive")  # same interpolation as numpy's default
    assert s["p25"] == pytest.approx(q[0]) and s["p75"] == pytest.approx(q[2])
    assert s["iqr"] == pytest.approx(q[2] - q[0])
    assert spread([7.0])["iqr"] == 0.0
    with pytest.raises(ValueError):
        spread([])


def test_record_round_trip(tmp_path):
    rec = _record(matmul_fp32_flops=1e11)
    path = write_record(rec, tmp_path / "sub" / "r.json")
    back = load_record(path)
    assert back == json.loads(json.dumps(rec))
    assert back["version"] == RECORD_VERSION and back["kind"] == "hwlm-bench"
    assert set(back["versions"]) == {"hwlm", "torch", "python"}
    assert not list((tmp_path / "sub").glob("*.tmp"))  # atomic write leaves no temp file


def test_default_out_names_benchmark_and_time():
    p = default_out("train")
    assert p.parent.as_posix() == "runs/bench" and p.name.startswith("train-") and p.suffix == ".json"


def test_record_of_another_version_is_one_line_error(tmp_path):
    rec = _record()
    rec["version"] = 2
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(DataError, match=r"bench record .*v2.json has version 2; this hwlm reads version 1: re-run"):
        load_record(path)


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ('{"kind": "hwlm-calibration", "version": 1}', "is not a hwlm bench record"),
    ("[]", "is not a hwlm bench record"),
])
def test_bad_record_files(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_record(path)
    with pytest.raises(DataError, match="does not exist"):
        load_record(tmp_path / "missing.json")


def test_compare_lines_up_metrics_with_ratios(tmp_path):
    a = write_record(_record(matmul_fp32_flops=1e11, membw_bytes_per_s=2e10, device="cpu"), tmp_path / "a.json")
    b = write_record(_record(matmul_fp32_flops=3e11, h2d_bytes_per_s=5e10), tmp_path / "b.json")
    c = compare_files(a, b)
    rows = {r.metric: r for r in c.rows}
    assert rows["matmul_fp32_flops"].ratio == pytest.approx(3.0)
    assert rows["membw_bytes_per_s"].b is None and rows["membw_bytes_per_s"].ratio is None
    assert rows["h2d_bytes_per_s"].a is None
    assert "device" not in rows  # strings are not compared
    table = format_comparison(c)
    assert "matmul_fp32_flops" in table and "3.000" in table


def test_cli_compare_and_version_error(tmp_path, capsys):
    a = write_record(_record(matmul_fp32_flops=1e11), tmp_path / "a.json")
    assert main(["bench", "compare", str(a), str(a)]) == 0
    assert "1.000" in capsys.readouterr().out
    old = json.loads(a.read_text())
    old["version"] = 0
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main(["bench", "compare", str(a), str(tmp_path / "old.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwlm: error: bench record") and "has version 0" in err and "\n" not in err


def test_bench_package_imports_neither_torch_nor_the_planner():
    import subprocess
    import sys
    code = ("import sys, hwlm.bench, hwlm.bench.workloads, hwlm.bench.calibrate, hwlm.bench.compare; "
            "print(sorted(m for m in ('torch', 'hwlm.plan') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
