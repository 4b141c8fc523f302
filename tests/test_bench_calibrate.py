"""Tests for hwlm.bench.calibrate: efficiencies from records, against a datasheet or this machine's peaks."""

from __future__ import annotations

import json

import pytest

from hwlm.bench.calibrate import Datasheet, calibrate, calibrate_files
from hwlm.calibration import write_calibration
from hwlm.bench.records import make_record, write_record
from hwlm.cli import main
from hwlm.errors import DataError

M = {"cpu": {"model": "Test CPU"}, "gpus": [{"name": "Test GPU"}]}


def _records():
    peak = make_record("peak", {"device": "cuda"}, [], {"matmul_bf16_flops": 500e12, "matmul_fp32_flops": 50e12,
                                                         "membw_bytes_per_s": 3e12}, machine=M)
    train = make_record("train", {"precision": "bf16"}, [], {"achieved_flops_per_s": 250e12}, machine=M)
    infer = make_record("infer", {"precision": "bf16"}, [], {"max_prefill_flops_per_s": 400e12,
                                                             "max_decode_bytes_per_s": 1.5e12}, machine=M)
    return [("peak.json", peak), ("train.json", train), ("infer.json", infer)]


def _by(doc, phase, dtype):
    return next(e for e in doc["entries"] if e["phase"] == phase and e["dtype"] == dtype)


def test_this_machine_is_relative_to_measured_peaks():
    doc = calibrate(_records(), "this-machine")
    assert doc["kind"] == "hwlm-calibration" and doc["version"] == 1
    assert _by(doc, "matmul", "bf16")["efficiency"] == 1.0
    assert _by(doc, "matmul", "bf16")["measured"] == 500e12
    assert _by(doc, "train", "bf16")["efficiency"] == pytest.approx(0.5)
    assert _by(doc, "prefill", "bf16")["efficiency"] == pytest.approx(0.8)
    assert _by(doc, "decode", "bf16")["efficiency"] == pytest.approx(0.5)
    assert _by(doc, "membw", "fp8")["reference"] == "measured-peak"


def test_datasheet_efficiency_and_out_of_range_is_dropped():
    sheet = Datasheet({"bf16": 1000e12, "fp32": 40e12}, 4e12)
    doc = calibrate(_records(), "h100-sxm", sheet)
    assert _by(doc, "matmul", "bf16")["efficiency"] == pytest.approx(0.5)
    assert _by(doc, "train", "bf16")["efficiency"] == pytest.approx(0.25)
    assert _by(doc, "decode", "bf16")["efficiency"] == pytest.approx(0.375)
    assert _by(doc, "membw", "bf16")["reference_value"] == 4e12
    assert _by(doc, "matmul", "fp32")["efficiency"] == pytest.approx(1.25)  # allowed up to 1.5
    doc = calibrate(_records(), "x", Datasheet({"bf16": 1000e12, "fp32": 20e12}, 4e12))
    assert not [e for e in doc["entries"] if e["dtype"] == "fp32" and e["phase"] == "matmul"]
    assert any("2.50x the datasheet reference" in n for n in doc["notes"])


def test_output_is_accepted_by_the_planner(tmp_path):
    from hwlm.plan.efficiency import load_calibration
    path = write_calibration(calibrate(_records(), "this-machine"), tmp_path / "cal.json")
    cal = load_calibration(path)
    assert cal.lookup("anything", "bf16", "train").efficiency == pytest.approx(0.5)


def test_errors():
    with pytest.raises(DataError, match="no bench records given"):
        calibrate([], "this-machine")
    with pytest.raises(DataError, match="hardware 'h100-sxm' needs datasheet peaks"):
        calibrate(_records(), "h100-sxm")
    other = make_record("peak", {}, [], {"matmul_bf16_flops": 1e12}, machine={"cpu": {"model": "Other"}, "gpus": []})
    with pytest.raises(DataError, match="the records come from 2 different machines"):
        calibrate(_records() + [("o.json", other)], "this-machine")


def test_cli_calibrate(tmp_path, capsys):
    paths = [str(write_record(r, tmp_path / name)) for name, r in _records()]
    out = tmp_path / "cal.json"
    assert main(["bench", "calibrate", *paths, "--hardware", "this-machine", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["entries"]
    assert main(["bench", "calibrate", *paths, "--hardware", "mybox", "--datasheet-flops", "bf16=1e15",
                 "--datasheet-bw", "4e12", "--out", str(out)]) == 0
    assert calibrate_files(paths, "mybox", Datasheet({"bf16": 1e15}, 4e12))["entries"]
    capsys.readouterr()
    assert main(["bench", "calibrate", *paths, "--hardware", "x", "--datasheet-flops", "bf16:1", "--out",
                 str(out)]) == 1
    assert "--datasheet-flops item 'bf16:1' is not DTYPE=FLOPS" in capsys.readouterr().err


def test_cli_calibrate_reads_the_catalog(tmp_path, capsys):
    paths = [str(write_record(r, tmp_path / name)) for name, r in _records()]
    out = tmp_path / "cal.json"
    assert main(["bench", "calibrate", *paths, "--hardware", "h200", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {e["reference"] for e in doc["entries"]} == {"datasheet"}
    capsys.readouterr()
    assert main(["bench", "calibrate", *paths, "--hardware", "no-such-gpu-9000", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hwlm: error:") and err.count("\n") == 1


def test_a_compressed_format_is_calibrated_against_the_dtype_it_computes_in():
    """``bench infer --run`` of a w8a8 / w4a16 run names the format as its precision; prefill is divided by the
    matmul peak of the data type the format runs in (int8 where known, else 16-bit), decode by bandwidth."""
    peak = make_record("peak", {"device": "cpu"}, [], {"matmul_bf16_flops": 2e11, "matmul_int8_flops": 8e11,
                                                       "membw_bytes_per_s": 2e10}, machine=M)
    recs = [("peak.json", peak)] + [
        (f"{fmt}.json", make_record("infer", {"precision": fmt}, [], {"max_prefill_flops_per_s": 4e10,
                                                                      "max_decode_bytes_per_s": 5e9}, machine=M))
        for fmt in ("w8a8", "w4a16")]
    doc = calibrate(recs, "this-machine")
    assert _by(doc, "prefill", "w8a8")["efficiency"] == pytest.approx(0.05)  # 4e10 / the int8 peak
    assert _by(doc, "prefill", "w4a16")["efficiency"] == pytest.approx(0.2)  # 4e10 / the bf16 peak
    assert _by(doc, "decode", "w4a16")["efficiency"] == pytest.approx(0.25)
    sheet = calibrate(recs[1:], "some-gpu", Datasheet({"bf16": 1e12, "int8": 2e12}, 1e11))
    assert _by(sheet, "prefill", "w8a8")["reference_value"] == 2e12
    assert _by(sheet, "prefill", "w4a16")["reference_value"] == 1e12


def test_an_infer_grid_gives_a_curve_by_rows():
    """Each bench infer cell is a point: decode at its batch (bytes/s over copy bandwidth), prefill at batch x
    prompt tokens (FLOP/s over the matmul peak); the plain entries stay the best of the grid."""
    peak = make_record("peak", {"device": "cpu"}, [], {"matmul_fp32_flops": 100e9, "membw_bytes_per_s": 20e9},
                       machine=M)
    cells = [{"name": "infer_cell", "batch": b, "prompt_len": 128,
              "summary": {"prefill_flops_per_s": pf, "decode_bytes_per_s": db}}
             for b, pf, db in ((1, 50e9, 8e9), (2, 60e9, 5e9), (8, 80e9, 6e9))]
    infer = make_record("infer", {"precision": "fp32"}, cells, {"max_prefill_flops_per_s": 80e9,
                                                                "max_decode_bytes_per_s": 8e9}, machine=M)
    doc = calibrate([("peak.json", peak), ("infer.json", infer)], "this-machine")
    curve = {e["rows"]: e["efficiency"] for e in doc["entries"] if e["phase"] == "decode_rows"}
    assert curve == pytest.approx({1: 0.4, 2: 0.25, 8: 0.3})
    pre = {e["rows"]: e["efficiency"] for e in doc["entries"] if e["phase"] == "prefill_rows"}
    assert pre == pytest.approx({128: 0.5, 256: 0.6, 1024: 0.8})
    assert _by(doc, "decode", "fp32")["efficiency"] == pytest.approx(0.4) and "rows" not in _by(doc, "decode", "fp32")


def test_an_infer_record_names_its_engine_and_kv_cache_dtype():
    """A compressed run's bench infer keeps its cache at --precision fp32 (config.kv_dtype); every entry the
    record gives carries that and the engine (hwlm's own loop, or onnxruntime for --backend onnx)."""
    peak = make_record("peak", {"device": "cpu"}, [], {"matmul_fp32_flops": 1e11, "matmul_bf16_flops": 2e11,
                                                       "membw_bytes_per_s": 2e10}, machine=M)
    cells = [{"name": "infer_cell", "batch": 1, "prompt_len": 128,
              "summary": {"prefill_flops_per_s": 4e10, "decode_bytes_per_s": 5e9}}]
    rate = {"max_prefill_flops_per_s": 4e10, "max_decode_bytes_per_s": 5e9}
    w8a8 = make_record("infer", {"precision": "w8a8", "kv_dtype": "fp32", "backend": "torch"}, cells, rate, machine=M)
    onnx = make_record("infer", {"precision": "fp32", "kv_dtype": "fp32", "backend": "onnx"}, [], rate, machine=M)
    doc = calibrate([("peak.json", peak), ("w8a8.json", w8a8), ("onnx.json", onnx)], "this-machine")
    mine = [e for e in doc["entries"] if e["dtype"] == "w8a8"]
    assert {e["phase"] for e in mine} == {"prefill", "decode", "prefill_rows", "decode_rows"}
    assert all((e["engine"], e["kv_dtype"]) == ("hwlm", "fp32") for e in mine)
    assert (_by(doc, "decode", "fp32")["engine"], _by(doc, "decode", "fp32")["kv_dtype"]) == ("onnxruntime", "fp32")
    assert "engine" not in _by(doc, "matmul", "fp32") and "kv_dtype" not in _by(doc, "membw", "fp32")
