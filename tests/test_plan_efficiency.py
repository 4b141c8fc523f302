"""Efficiency priors and calibration files."""

from __future__ import annotations

import json

import pytest

from hwlm.errors import PlanError
from hwlm.plan.efficiency import Calibration, load_calibration, priors_for


def _write(tmp_path, data) -> str:
    p = tmp_path / "cal.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def test_priors_depend_on_kind_dtype_and_balance() -> None:
    a100 = priors_for("gpu", "bf16", 312e12, 2.039e12)
    h100 = priors_for("gpu", "bf16", 989e12, 3.35e12)
    h100_fp8 = priors_for("gpu", "fp8", 1979e12, 3.35e12)
    assert a100.matmul_eff > h100.matmul_eff > h100_fp8.matmul_eff  # higher ridge point, lower share of peak
    assert priors_for("gpu", "bf16", weight_dtype="int4").decode_bw_eff < priors_for("gpu", "bf16").decode_bw_eff
    assert priors_for("cpu", "fp32").matmul_eff != priors_for("gpu", "fp32").matmul_eff
    assert priors_for("fpga", "fp16") == priors_for("gpu", "fp16")  # unknown kinds take the GPU prior
    assert a100.source


def test_load_calibration_roundtrip(tmp_path) -> None:
    cal = load_calibration(_write(tmp_path, {"version": 1, "kind": "hwlm-calibration", "machine": {}, "entries": [
        {"device": "H100-SXM", "dtype": "bf16", "phase": "matmul", "efficiency": 0.7, "measured": 6.9e14,
         "unit": "FLOP/s", "source": "bench record x.json, 2026-01-01"}]}))
    assert isinstance(cal, Calibration)
    e = cal.lookup("h100-sxm", "bf16", "matmul")
    assert e is not None and e.efficiency == 0.7 and "bench record" in e.source
    assert cal.lookup("h100-sxm", "bf16", "decode") is None
    assert load_calibration(None) is None


@pytest.mark.parametrize("data, message", [
    ("{nope", r"is not valid JSON"),
    ({"version": 1, "kind": "other", "entries": []}, r"is not an hwlm calibration"),
    ({"version": 2, "kind": "hwlm-calibration", "entries": []}, r"has version 2; this hwlm reads version 1"),
    ({"version": 1, "kind": "hwlm-calibration", "entries": []}, r"has no entries"),
    ({"version": 1, "kind": "hwlm-calibration", "entries": [{"device": "x", "dtype": "bf16", "phase": "train"}]},
     r"entry 0 lacks 'efficiency'"),
    ({"version": 1, "kind": "hwlm-calibration",
      "entries": [{"device": "x", "dtype": "bf16", "phase": "warp", "efficiency": 0.5}]}, r"has phase 'warp'"),
    ({"version": 1, "kind": "hwlm-calibration",
      "entries": [{"device": "x", "dtype": "bf16", "phase": "train", "efficiency": 3}]}, r"has efficiency 3"),
])
def test_bad_calibration_files(tmp_path, data, message) -> None:
    with pytest.raises(PlanError, match=message):
        load_calibration(_write(tmp_path, data))


def test_missing_calibration_file(tmp_path) -> None:
    with pytest.raises(PlanError, match=r"calibration file .*missing.json does not exist"):
        load_calibration(tmp_path / "missing.json")
