"""hwlm.calibration: the calibration file's one writer and one strict, versioned reader."""

from __future__ import annotations

import json

import pytest

from hwlm.calibration import calibration_document, read_calibration, write_calibration
from hwlm.errors import PlanError

ENTRY = {"device": "this-machine", "dtype": "fp32", "phase": "matmul", "efficiency": 1.0, "measured": 3.5e11,
         "unit": "FLOP/s", "reference": "measured-peak", "reference_value": 3.5e11, "source": "bench record p.json"}


def test_round_trip_keeps_every_field(tmp_path) -> None:
    doc = calibration_document("this-machine", [ENTRY], machine={"cpu": {"model": "X"}}, notes=["n"])
    got = read_calibration(write_calibration(doc, tmp_path / "c.json"))
    e = got.entries[0]
    assert (e.device, e.dtype, e.phase, e.efficiency, e.measured, e.unit, e.reference, e.reference_value, e.source) == \
        tuple(ENTRY[k] for k in ("device", "dtype", "phase", "efficiency", "measured", "unit", "reference",
                                 "reference_value", "source"))
    assert got.device == "this-machine" and got.machine == {"cpu": {"model": "X"}} and got.notes == ["n"]


@pytest.mark.parametrize("change, message", [
    ({"entries": [{**ENTRY, "efficency": 0.4}]}, r"entry 0 has unknown key\(s\) 'efficency'; known: device"),
    ({"extra": 1}, r"has unknown key\(s\) 'extra'; known: kind, version"),
    ({"version": 2}, r"has version 2; this hwlm reads version 1"),
    ({"entries": [{k: v for k, v in ENTRY.items() if k != "phase"}]}, r"entry 0 lacks 'phase'"),
    ({"entries": [{**ENTRY, "phase": "decode_rows"}]}, r"phase 'decode_rows' and rows None; the phases decode_rows"),
    ({"entries": [{**ENTRY, "rows": 4}]}, r"phase 'matmul' and rows 4; .* need rows \(a whole number >= 1\)"),
    ({"entries": [{**ENTRY, "phase": "prefill_rows", "rows": 0}]}, r"rows 0"),
])
def test_the_reader_names_what_is_wrong(tmp_path, change: dict, message: str) -> None:
    doc = {**calibration_document("this-machine", [ENTRY], machine={}, notes=[]), **change}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanError, match=message):
        read_calibration(path)


def test_the_writer_refuses_what_the_reader_would() -> None:
    with pytest.raises(PlanError, match="efficiency 2.0"):
        calibration_document("x", [{**ENTRY, "efficiency": 2.0}], machine={}, notes=[])


def test_a_curve_point_keeps_its_rows(tmp_path) -> None:
    point = {**ENTRY, "phase": "decode_rows", "rows": 4, "efficiency": 0.2}
    got = read_calibration(write_calibration(calibration_document("this-machine", [ENTRY, point], machine={},
                                                                  notes=[]), tmp_path / "c.json"))
    assert [(e.phase, e.rows) for e in got.entries] == [("matmul", None), ("decode_rows", 4)]


def test_an_inference_entry_keeps_its_engine_and_kv_dtype(tmp_path) -> None:
    entry = {**ENTRY, "phase": "decode", "dtype": "w8a8", "efficiency": 0.4, "engine": "hwlm", "kv_dtype": "FP32"}
    got = read_calibration(write_calibration(calibration_document("this-machine", [ENTRY, entry], machine={},
                                                                  notes=[]), tmp_path / "c.json"))
    assert [(e.engine, e.kv_dtype) for e in got.entries] == [(None, None), ("hwlm", "fp32")]
    with pytest.raises(PlanError, match=r"entry 0 has kv_dtype 'fp33'; use one of fp64, fp32"):
        calibration_document("this-machine", [{**entry, "kv_dtype": "fp33"}], machine={}, notes=[])
