"""hwlm report: a self-contained HTML page with every section, honest energy labels, strict inputs.

The fast tests write small run folders and bench records in the real schemas (records through
``hwlm.bench.records.make_record``, run configs from a real ``ModelConfig``); the slow test
produces them with the real ``hwlm prepare``, ``hwlm train`` and ``hwlm bench`` commands.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hwlm.bench.records import make_record, write_record
from hwlm.cli import main
from hwlm.config import to_dict
from hwlm.errors import DataError, PlanError
from hwlm.formulas import kv_cache_bytes_per_token, param_count
from hwlm.model.config import ModelConfig
from hwlm.plan.catalog import list_devices
from hwlm.report import ReportConfig, collect_inputs, report
from hwlm.report.analysis import workload_points

MACHINE = {"hostname": "testbox", "os": "Linux 6.1", "python": "3.11.7", "torch": "2.13.0+cpu",
           "cpu": {"model": "Test CPU", "arch": "x86_64", "physical_cores": 2, "logical_cores": 2,
                   "features": {"avx2": True, "avx512f": False}, "torch_capability": "AVX2"},
           "memory_bytes": 8 * 2**30, "memory_available_bytes": 6 * 2**30, "gpus": [], "cuda_runtime": None,
           "mps_available": False, "xla": None, "device": "cpu", "device_reason": "no GPU", "notes": []}
SECTION_IDS = ("machine", "loss", "throughput", "roofline", "plan", "energy")


# --------------------------------------------------------------------------- fixtures


def _write_run(folder: Path, lr_scale: float = 1.0, steps: int = 12) -> Path:
    folder.mkdir(parents=True)
    model = ModelConfig.from_name("debug")
    config = {"version": 1, "train": {"model": "debug", "batch_size": 4, "grad_accum": 1, "max_steps": steps},
              "model": to_dict(model), "data": {"vocab_size": 512},
              "runtime": {"device": "cpu", "precision": "fp32", "world_size": 1, "peak_flops": 2.5e11,
                          "params": param_count(model.to_arch()).total}}
    (folder / "config.json").write_text(json.dumps(config))
    lines = []
    for step in range(2, steps + 1, 2):
        row: dict[str, Any] = {"step": step, "tokens": step * 128, "loss": 6.3 - 0.02 * step * lr_scale,
                               "lr": 6e-4, "tokens_per_s": 4000.0 + 100 * step, "mfu": 0.004}
        if step % 6 == 0:
            row["val_loss"] = 6.28 - 0.02 * step * lr_scale
        lines.append(json.dumps(row))
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _energy(method: str, joules: float) -> dict[str, Any]:
    return {"joules": joules, "seconds": 0.1, "method": method, "detail": f"{method} test meter", "watts": joules / 0.1}


def _write_bench(folder: Path) -> Path:
    folder.mkdir(parents=True)
    peak = make_record("peak", {"device": "cpu", "size": 256}, [
        {"name": "matmul", "dtype": "fp32", "n": 256, "inner": 10, "seconds": [0.1],
         "flops_per_s": {"median": 3e11}, "energy": _energy("estimate-tdp", 1.0), "flops_per_joule": 3e10},
        {"name": "membw", "bytes": 2**24, "bytes_moved_per_call": 2**25, "inner": 10, "seconds": [0.1],
         "bytes_per_s": {"median": 4e10}}],
        {"device": "cpu", "matmul_fp32_flops": 3e11, "matmul_fp32_flops_per_joule": 3e10,
         "matmul_fp32_energy_method": "estimate-tdp", "membw_bytes_per_s": 4e10},
        ["matmul tf32 on cpu: tf32 is a CUDA tensor-core mode"], machine=MACHINE)
    write_record(peak, folder / "peak.json")
    train = make_record("train", {"model": "debug", "device": "cpu", "batch": 4, "seq": 32, "steps": 5,
                                  "precision": "fp32", "vocab_size": None},
                        [{"name": "train_step", "step_seconds": [0.0025] * 5, "energy": _energy("measured-rapl", 0.05)}],
                        {"device": "cpu", "tokens_per_s": 51200.0, "step_s_p50": 0.0025, "step_s_p90": 0.0026,
                         "step_s_p99": 0.0027, "mfu_measured": 0.017, "mfu_datasheet": None,
                         "mfu_reference": "matmul_fp32_flops from peak.json", "peak_memory_bytes": 3e8,
                         "joules_per_token": 2e-4, "avg_watts": 9.5, "energy_method": "measured-rapl"},
                        machine=MACHINE)
    write_record(train, folder / "train.json")
    cell = {"name": "infer_cell", "batch": 2, "prompt_len": 16, "new_tokens": 8, "ttft_seconds": [0.02],
            "tpot_seconds": [0.01], "summary": {"ttft_ms": 20.0, "tpot_ms_p50": 10.0, "prefill_tokens_per_s": 1600.0}}
    infer = make_record("infer", {"model": "debug", "device": "cpu", "precision": "fp32", "block_size": 32,
                                  "vocab_size": None, "batch_sizes": [2], "prompt_lens": [16], "new_tokens": 8},
                        [cell], {"device": "cpu", "params": 15296, "joules_per_generated_token": 0.04,
                                 "avg_watts": 5.0, "energy_method": "estimate-tdp"}, machine=MACHINE)
    write_record(infer, folder / "infer.json")
    return folder


class _Page(HTMLParser):
    """Collects what the checks need: URL attributes, ids, per-section text and SVG counts, table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.ids: list[str] = []
        self.section: str | None = None
        self.svgs: dict[str, int] = {}
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.row_classes: dict[str, list[str]] = {}
        self._cells: list[str] | None = None
        self._in_td = False
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href", "xlink:href", "action", "data"):
            if a.get(key):
                self.urls.append((tag, key, str(a[key])))
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "section":
            self.section = a.get("id")
        sec = self.section or ""
        if tag == "svg":
            self.svgs[sec] = self.svgs.get(sec, 0) + 1
        if tag == "tr":
            self._cells = []
            self.row_classes.setdefault(sec, []).append(a.get("class") or "")
        if tag == "td":
            self._in_td = True
            if self._cells is not None:
                self._cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_td = False
        if tag == "tr" and self._cells is not None:
            if self._cells:
                self.rows.setdefault(self.section or "", []).append(self._cells)
            else:
                self.row_classes[self.section or ""].pop()   # a header row
            self._cells = None
        if tag == "section":
            self.section = None

    def handle_data(self, data: str) -> None:
        if self.section:
            self.text[self.section] = self.text.get(self.section, "") + data
        if self._in_td and self._cells:
            self._cells[-1] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, _Page, Path]:
    root = tmp_path_factory.mktemp("report")
    runs = [_write_run(root / "runs" / "a"), _write_run(root / "runs" / "b", lr_scale=2.0)]
    bench = _write_bench(root / "bench")
    out = report(ReportConfig(runs=runs, bench=[bench], out=root / "out" / "report.html"))
    return out, _parse(out), root


# --------------------------------------------------------------------------- the page


def test_report_is_self_contained(rendered: tuple[Path, _Page, Path]) -> None:
    out, page, _ = rendered
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    external = [u for u in page.urls if not u[2].startswith("#")]
    assert external == [], f"links or sources outside the file: {external[:5]}"
    assert not {"script", "link", "img", "iframe"} & page.tags
    assert "@import" not in out.read_text() and "url(http" not in out.read_text()
    assert len(page.ids) == len(set(page.ids)), "element ids repeat across the inline SVGs"


def test_every_section_is_present_with_a_chart(rendered: tuple[Path, _Page, Path]) -> None:
    _, page, _ = rendered
    for sec in SECTION_IDS:
        assert sec in page.ids, f"section {sec} missing"
    for sec in ("loss", "throughput", "roofline", "plan", "energy"):
        assert page.svgs.get(sec, 0) >= 1, f"section {sec} has no <svg>"
        assert "Produce it with" not in page.text[sec], f"section {sec} claims missing data: {page.text[sec][:200]}"
    assert "testbox" in page.text["machine"] and "Test CPU" in page.text["machine"]
    assert "hwlm 0.1.0" in page.text["machine"]


def test_runs_and_workloads_appear(rendered: tuple[Path, _Page, Path]) -> None:
    _, page, _ = rendered
    loss_runs = [r[0] for r in page.rows["loss"]]
    assert loss_runs == ["a", "b"]
    assert "a train" in page.text["loss"] and "b val" in page.text["loss"]  # the legend, as SVG text
    workloads = " ".join(r[0] for r in page.rows["roofline"])
    for phase in ("train step", "prefill", "decode", "train run a"):
        assert phase in workloads


def test_plan_table_lists_catalog_devices_and_marks_what_does_not_fit(rendered: tuple[Path, _Page, Path]) -> None:
    _, page, _ = rendered
    listed = [r[0] for r in page.rows["plan"]]
    catalog = [d.id for d in list_devices()]
    assert sorted(listed) == sorted(catalog) and len(listed) >= 5
    for dev in ("h100-sxm", "a100-80gb"):
        row = next(r for r in page.rows["plan"] if r[0] == dev)
        assert row[3] == "yes" and float(row[5]) > 0   # fits, and a positive number of days
    classes = dict(zip(listed, page.row_classes["plan"]))
    assert all(classes[r[0]] == "nofit" for r in page.rows["plan"] if r[3].startswith("no"))


def test_energy_is_labelled_measured_or_estimate(rendered: tuple[Path, _Page, Path]) -> None:
    _, page, _ = rendered
    rows = {r[0]: r for r in page.rows["energy"]}
    train = next(r for k, r in rows.items() if k.startswith("train debug"))
    infer = next(r for k, r in rows.items() if k.startswith("infer debug"))
    assert train[3].startswith("measured (RAPL")
    assert infer[3].startswith("estimate (TDP")
    assert any(k.startswith("plan llama-2-7b") and r[3].startswith("estimate (planner") for k, r in rows.items())
    assert "200 µJ" in train[1]


def test_missing_inputs_say_what_to_run_and_a_job_that_fits_nowhere_is_marked(tmp_path: Path) -> None:
    # 70B parameters with Adam states (~1.1 TB) cannot fit on one 80 GB GPU: the row must say so
    out = report(ReportConfig(out=tmp_path / "r.html", job_model="llama-2-70b", job_tokens=1e9, job_devices=1))
    page = _parse(out)
    h100 = next(r for r in page.rows["plan"] if r[0] == "h100-sxm")
    assert h100[3].startswith("no: ") and page.row_classes["plan"][page.rows["plan"].index(h100)] == "nofit"
    assert "hwlm train" in page.text["loss"] and "No training run" in page.text["loss"]
    assert "hwlm bench peak" in page.text["roofline"]
    assert "hwlm bench train" in page.text["throughput"] and "hwlm bench train" in page.text["energy"]
    assert page.svgs.get("plan", 0) == 1                      # the planner needs no measurements
    assert "hwlm.hw.detect()" in page.text["machine"]


def test_decode_point_moves_the_bytes_bench_infer_counts(tmp_path: Path) -> None:
    inputs = collect_inputs([], [_write_bench(tmp_path / "bench")])
    points, notes = workload_points(inputs)
    assert notes == []
    decode = next(p for p in points if p.phase == "decode")
    arch = ModelConfig.from_name("debug", block_size=32).to_arch()
    ctx = 16 + 8 // 2
    assert decode.bytes == param_count(arch).total * 4 + 2 * ctx * kv_cache_bytes_per_token(arch, 4)
    assert decode.seconds == pytest.approx(0.010)


# --------------------------------------------------------------------------- bad input


def test_missing_run_folder_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert err == f"hwlm: error: run folder {tmp_path / 'nope'} does not exist: pass a folder written by " \
                  f"`hwlm train --out`"
    assert not (tmp_path / "r.html").exists()


def test_folder_without_log_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(DataError, match=r"has no log\.jsonl: it is not a training run folder"):
        collect_inputs([tmp_path / "run"], [])


def test_damaged_log_line_is_an_error_but_a_torn_last_line_is_a_note(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    good = (run / "log.jsonl").read_text()
    (run / "log.jsonl").write_text(good + '{"step": 14, "los')
    inputs = collect_inputs([run], [])
    assert len(inputs.runs[0].log) == 6 and any("incomplete last line" in n for n in inputs.notes)
    (run / "log.jsonl").write_text("not json\n" + good)
    with pytest.raises(DataError, match=r"log\.jsonl line 1 is not a JSON object"):
        collect_inputs([run], [])


def test_wrong_version_or_kind_of_record_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _write_bench(tmp_path / "bench")
    rec = json.loads((bench / "peak.json").read_text())
    (bench / "peak.json").write_text(json.dumps({**rec, "version": 99}))
    with pytest.raises(DataError, match=r"has version 99; this hwlm reads version 1"):
        collect_inputs([], [bench])
    code = main(["report", "--bench", str(bench / "peak.json"), "--out", str(tmp_path / "r.html")])
    assert code == 1 and "has version 99" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"kind": "something-else", "version": 1}))
    with pytest.raises(DataError, match=r"is not a hwlm bench record"):
        collect_inputs([], [tmp_path / "other.json"])
    with pytest.raises(DataError, match=r"does not exist"):
        collect_inputs([], [tmp_path / "missing.json"])


def test_bench_folder_skips_other_kinds_and_empty_folder_is_an_error(tmp_path: Path) -> None:
    bench = _write_bench(tmp_path / "bench")
    (bench / "calibration.json").write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "entries": []}))
    (bench / "hw.json").write_text(json.dumps({"host": "vm", "cpu": {}}))  # `hwlm hw --json`: no kind at all
    inputs = collect_inputs([], [bench])
    assert sorted(r.benchmark for r in inputs.records) == ["infer", "peak", "train"]
    assert any("calibration.json" in n and "not a bench record" in n for n in inputs.notes)
    assert any("hw.json" in n and "plain JSON" in n for n in inputs.notes)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no bench records"):
        collect_inputs([], [tmp_path / "empty"])


def test_unknown_job_model_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"unknown model 'llama-9000'"):
        report(ReportConfig(out=tmp_path / "r.html", job_model="llama-9000"))
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- with the real producers


@pytest.mark.slow
def test_report_from_real_train_run_and_bench_records(tmp_path: Path) -> None:
    data, run, bench = tmp_path / "data", tmp_path / "run", tmp_path / "bench"
    assert main(["prepare", "--out", str(data), "--vocab-size", "512"]) == 0
    assert main(["train", "--data", str(data), "--out", str(run), "--model", "debug", "--max-steps", "6",
                 "--log-interval", "2", "--eval-interval", "3", "--eval-batches", "1", "--batch-size", "2",
                 "--warmup", "1", "--no-progress", "--no-tensorboard"]) == 0
    assert main(["bench", "peak", "--size", "64", "--repeats", "2", "--warmup", "1", "--dtypes", "fp32",
                 "--membw-mib", "4", "--out", str(bench / "peak.json")]) == 0
    assert main(["bench", "train", "--model", "debug", "--batch", "2", "--steps", "2", "--warmup", "1",
                 "--peak-record", str(bench / "peak.json"), "--out", str(bench / "train.json")]) == 0
    assert main(["bench", "infer", "--model", "debug", "--batch-sizes", "1", "--prompt-lens", "8",
                 "--new-tokens", "4", "--repeats", "1", "--out", str(bench / "infer.json")]) == 0
    out = tmp_path / "report.html"
    assert main(["report", "--run", str(run), "--bench", str(bench), "--out", str(out)]) == 0
    page = _parse(out)
    for sec in ("loss", "throughput", "roofline", "plan", "energy"):
        assert page.svgs.get(sec, 0) >= 1, f"section {sec} has no <svg>"
    assert [u for u in page.urls if not u[2].startswith("#")] == []
    inputs = collect_inputs([run], [bench])
    points, notes = workload_points(inputs)
    assert notes == [] and {p.phase for p in points} == {"train", "prefill", "decode"}
    # the decode bytes agree with what hwlm bench infer itself assumed for its bandwidth figure
    infer = inputs.bench("infer")[0]
    decode = next(p for p in points if p.phase == "decode")
    s = infer.summary
    assert decode.bytes == pytest.approx(s["b1_p8_decode_bytes_per_s"] * s["b1_p8_tpot_ms_p50"] / 1e3, rel=1e-9)


def test_a_point_above_the_dram_roof_is_cache_resident_and_never_over_100_percent() -> None:
    """Decode of a small model runs faster than DRAM allows (its weights stay in cache): the table measures
    it against the cache roof, or says cache-resident without a percentage when no cache roof was measured."""
    from hwlm.report.analysis import Roof, WorkPoint
    from hwlm.report.sections import _of_roof
    # 1 FLOP/byte: the DRAM roof is 10 GFLOP/s there, the cache roof 100 GFLOP/s, the matmul roof 1 TFLOP/s.
    decode = WorkPoint(label="decode", phase="decode", flops=21e9, bytes=21e9, seconds=1.0, device="cpu",
                       precision="fp32", source="t")  # 2.1x the DRAM roof
    slow = WorkPoint(label="slow", phase="train", flops=5e9, bytes=5e9, seconds=1.0, device="cpu",
                     precision="fp32", source="t")
    with_cache = Roof(device="cpu", flops={"fp32": 1e12}, bytes_per_s=1e10, source="t", cache_bytes_per_s=1e11)
    without = Roof(device="cpu", flops={"fp32": 1e12}, bytes_per_s=1e10, source="t")
    assert with_cache.attainable(decode) == (1e11, "cache")
    assert _of_roof(with_cache, decode) == "21% of the cache roof (cache-resident)"
    assert _of_roof(with_cache, slow) == _of_roof(without, slow) == "50%"
    assert _of_roof(without, decode) == "above the DRAM roof: cache-resident (no cache roof measured)"
    beyond = WorkPoint(label="x", phase="decode", flops=2e11, bytes=1e9, seconds=1.0, device="cpu",
                       precision="fp32", source="t")  # 200 FLOP/B: under the matmul roof, past both ridges
    assert with_cache.attainable(beyond) == (1e12, "compute")
    assert _of_roof(with_cache, beyond) == "20%"


# --------------------------------------------------------------------------- classification section

def test_classifier_runs_get_a_confusion_matrix_and_f1_per_class(tmp_path: Path) -> None:
    from classify_tiny import cls_cfg, prepare_cls

    from hwlm.evaluate_classify import evaluate_classifier
    from hwlm.train.classify import train_classifier
    from hwlm.train.task_config import TaskConfig

    data = prepare_cls(tmp_path / "data")
    run = tmp_path / "clf"
    task = TaskConfig(task="classify", classifier="bow", buckets=1024)
    train_classifier(cls_cfg(data, run, max_steps=15), task, say=lambda m: None)
    ev = evaluate_classifier(run, device="cpu")  # writes run/eval-test.json, which the report reads
    html = report(ReportConfig(runs=[run], out=tmp_path / "r.html", job_model="llama-2-7b")).read_text()
    part = html[html.index('<section id="classify"'):]
    part = part[:part.index("</section>")]
    assert part.count("<svg") == 1  # one figure: the matrix and the F1 bars
    assert f"{ev.report['accuracy']:.4g}" in part and f"{ev.report['macro avg']['f1-score']:.4g}" in part
    assert ev.seeds is None and "<td>n/a</td>" in part.replace(' class="num"', "")  # one seed: no spread
    for label in ev.labels:
        assert f">{label}<" in part  # each class is named on the axes


def test_no_evaluated_classifier_says_how_to_get_one(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "lm")
    (run / "eval-test.json").write_text('{"kind": "something else"}')
    inputs = collect_inputs([run], [])
    assert inputs.runs[0].classify_evals == {}
    assert any("not a version-1 hwlm classifier evaluation" in n for n in inputs.runs[0].notes)
    html = report(ReportConfig(runs=[run], out=tmp_path / "r.html", job_model="llama-2-7b")).read_text()
    part = html[html.index('<section id="classify"'):]
    assert "No evaluated classifier run was given." in part[:part.index("</section>")]
