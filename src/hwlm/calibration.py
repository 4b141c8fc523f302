"""The planner's calibration file: its one writer and its one reader, versioned and strict (torch-free).

``hwlm bench calibrate`` builds the document (:func:`calibration_document`) and writes it
(:func:`write_calibration`); the planner reads it (:func:`read_calibration`). Both sides live here, so
the schema is written once. Version 1:

    {"kind": "hwlm-calibration", "version": 1, "device": "h100-sxm" | "this-machine",
     "created": "2026-11-28T10:00:00+00:00", "machine": {...hwlm.hw.detect()...}, "notes": ["..."],
     "entries": [{"device": ..., "dtype": "bf16", "phase": "train", "efficiency": 0.41,
                  "measured": 3.9e14, "unit": "FLOP/s", "reference": "datasheet" | "measured-peak",
                  "reference_value": 9.89e14, "source": "bench record ...",
                  "engine": "hwlm", "kv_dtype": "fp32"}]}

``efficiency`` is measured / reference in (0, 1.5]; ``device``, ``dtype``, ``phase`` and ``efficiency``
are required in an entry, the rest optional; the phases ``decode_rows`` and ``prefill_rows`` are points of
a curve and also need ``rows``: the rate of one ``hwlm bench infer`` cell, measured with that many rows
through each matrix product (a decode step of ``rows`` sequences; a prefill of ``rows`` prompt tokens),
so the planner sees how the rate moves from one row to many (a matrix-vector product at one row, a
matrix product from two on, whose small-row kernels stream the weights more slowly on a CPU); an entry from
``hwlm bench infer`` also names the ``engine`` that ran it (``hwlm``: its own torch loop; ``onnxruntime``) and
the ``kv_dtype`` it kept its KV cache in (fp32 under the compressed formats, whose activations stay fp32), so
the planner prices the cache in what that engine really stores (:mod:`hwlm.plan.kv_cache`); ``kind``,
``version`` and ``entries`` in the document. A key the schema does not name is an error that names it (a
typo must not silently drop a measurement).
``this-machine`` (:data:`THIS_MACHINE`) is the device id of a calibration of the machine it was measured
on, where no catalog entry exists: its matmul and membw entries carry the machine's measured peaks.

An entry's ``dtype`` is a matmul data type (``fp32``, ``bf16``, ``int8``, ...) or one of the compressed
weight formats (``w8a8``, ``w8a16``, ``w4a16``: ``hwlm bench infer --run`` of a compressed run). A format's
``prefill`` efficiency is relative to the matmul peak of the data type its matrix units run in,
:func:`compute_dtype`, which the planner uses too; its ``decode`` efficiency to memory bandwidth.

    >>> doc = calibration_document("this-machine", [{"device": "this-machine", "dtype": "fp32",
    ...     "phase": "matmul", "efficiency": 1.0, "measured": 3.5e11}], machine={}, notes=[])
    >>> parse_calibration(doc, "example").entries[0].measured
    350000000000.0
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hwlm.errors import PlanError
from hwlm.formulas import DTYPE_BYTES

__all__ = ["KIND", "VERSION", "THIS_MACHINE", "THIS_MACHINE_ALIASES", "PHASES", "ROW_PHASES", "MAX_EFFICIENCY",
           "CalibrationEntry", "CalibrationFile", "calibration_document", "parse_calibration", "read_calibration",
           "write_calibration", "is_this_machine", "COMPUTE_DTYPES", "compute_dtype"]

KIND, VERSION = "hwlm-calibration", 1
THIS_MACHINE = "this-machine"
THIS_MACHINE_ALIASES = (THIS_MACHINE, "this", "local")
PHASES = ("matmul", "train", "prefill", "decode", "membw", "decode_rows", "prefill_rows")
ROW_PHASES = ("decode_rows", "prefill_rows")  # curve points: an entry of these phases carries its ``rows``
MAX_EFFICIENCY = 1.5  # above it a "measurement" is a cache-resident toy beating DRAM, not an efficiency
_REQUIRED = ("device", "dtype", "phase", "efficiency")
_OPTIONAL = ("measured", "unit", "reference", "reference_value", "source", "rows", "engine", "kv_dtype")
_DOC_KEYS = ("kind", "version", "device", "created", "entries", "machine", "notes")
# The data type the matrix units run in for each inference precision, in order of preference: weight-only
# w8a16/w4a16 dequantise to 16 bits in the kernel; w8a8 and fp8 use the 8-bit units when the device has them.
COMPUTE_DTYPES = {"fp32": ("fp32",), "bf16": ("bf16", "fp16"), "fp16": ("fp16", "bf16"),
                  "fp8": ("fp8", "bf16", "fp16"), "w8a8": ("int8", "fp8", "bf16", "fp16"),
                  "w8a16": ("bf16", "fp16"), "w4a16": ("bf16", "fp16")}


def compute_dtype(precision: str, available: "list[str] | tuple[str, ...] | dict[str, float]") -> str | None:
    """The first of ``precision``'s compute data types in ``available`` (matmul peaks known), else None.

    >>> compute_dtype("w8a8", {"fp32": 1e11, "bf16": 2e11}), compute_dtype("w4a16", ["fp32"])
    ('bf16', None)
    """
    return next((d for d in COMPUTE_DTYPES.get(precision, (precision,)) if d in available), None)


def is_this_machine(hardware: str | None) -> bool:
    """True for no hardware given or one of :data:`THIS_MACHINE_ALIASES` (any case)."""
    return hardware is None or hardware.strip().lower() in THIS_MACHINE_ALIASES


@dataclass(frozen=True)
class CalibrationEntry:
    """One measured efficiency for (device, dtype, phase), and the absolute rate behind it."""

    device: str
    dtype: str
    phase: str
    efficiency: float
    source: str
    measured: float | None = None
    unit: str | None = None
    reference: str | None = None
    reference_value: float | None = None
    rows: int | None = None  # a curve point's rows (ROW_PHASES); None for the other phases
    engine: str | None = None  # the serving engine that measured an inference entry (hwlm, onnxruntime)
    kv_dtype: str | None = None  # the data type that engine kept its KV cache in


@dataclass(frozen=True)
class CalibrationFile:
    """A parsed calibration: its entries, the measured machine and where it came from."""

    entries: list[CalibrationEntry]
    path: str
    device: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def calibration_document(device: str, entries: list[dict[str, Any]], machine: dict[str, Any], notes: list[str],
                         created: str | None = None) -> dict[str, Any]:
    """The version-1 document ``hwlm bench calibrate`` writes; checked by :func:`parse_calibration`."""
    doc = {"version": VERSION, "kind": KIND, "device": device,
           "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "entries": entries, "machine": machine, "notes": notes}
    parse_calibration(doc, "the new calibration")  # the writer never writes what the reader would refuse
    return doc


def _number(raw: dict[str, Any], key: str) -> float | None:
    v = raw.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _name(raw: dict[str, Any], key: str) -> str | None:
    v = raw.get(key)
    return str(v).lower() if v is not None else None


def _entry(where: str, i: int, raw: Any) -> CalibrationEntry:
    at = f"{where}: entry {i}"
    if not isinstance(raw, dict):
        raise PlanError(f"{at} is not an object; see the schema in hwlm/calibration.py")
    for key in _REQUIRED:
        if key not in raw:
            raise PlanError(f"{at} lacks '{key}'; see the schema in hwlm/calibration.py")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise PlanError(f"{at} has unknown key(s) {', '.join(map(repr, unknown))}; known: "
                        f"{', '.join(_REQUIRED + _OPTIONAL)}")
    if raw["phase"] not in PHASES:
        raise PlanError(f"{at} has phase {raw['phase']!r}; use one of {', '.join(PHASES)}")
    eff = raw["efficiency"]
    if isinstance(eff, bool) or not isinstance(eff, (int, float)) or not 0 < eff <= MAX_EFFICIENCY:
        raise PlanError(f"{at} has efficiency {eff!r}; it must be measured/peak, a number in (0, {MAX_EFFICIENCY}]")
    rows = raw.get("rows")
    if (raw["phase"] in ROW_PHASES) != (rows is not None) or rows is not None and (
            isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise PlanError(f"{at} has phase {raw['phase']!r} and rows {rows!r}; the phases {', '.join(ROW_PHASES)} "
                        "need rows (a whole number >= 1), the others none")
    kv = _name(raw, "kv_dtype")
    if kv is not None and kv not in DTYPE_BYTES:
        raise PlanError(f"{at} has kv_dtype {raw['kv_dtype']!r}; use one of {', '.join(DTYPE_BYTES)}")
    return CalibrationEntry(device=str(raw["device"]).lower(), dtype=str(raw["dtype"]).lower(), phase=raw["phase"],
                            efficiency=float(eff), source=str(raw.get("source") or f"{where}"),
                            measured=_number(raw, "measured"), unit=raw.get("unit"), reference=raw.get("reference"),
                            reference_value=_number(raw, "reference_value"), rows=rows,
                            engine=_name(raw, "engine"), kv_dtype=kv)


def parse_calibration(data: Any, where: str) -> CalibrationFile:
    """Check a loaded document against the schema (every unknown or missing key named); PlanError if not."""
    where = f"calibration file {where}" if not where.startswith("the ") else where
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise PlanError(f"{where} is not an hwlm calibration (kind must be '{KIND}')")
    if data.get("version") != VERSION:
        raise PlanError(f"{where} has version {data.get('version')!r}; this hwlm reads version {VERSION}")
    unknown = sorted(set(data) - set(_DOC_KEYS))
    if unknown:
        raise PlanError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(_DOC_KEYS)}")
    entries = data.get("entries")
    if not isinstance(entries, list) or not entries:
        raise PlanError(f"{where} has no entries; run `hwlm bench calibrate` again")
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    notes = [str(n) for n in data.get("notes") or []]
    return CalibrationFile([_entry(where, i, e) for i, e in enumerate(entries)], where.removeprefix("calibration file "),
                           str(data.get("device") or ""), machine, notes)


def read_calibration(path: str | Path) -> CalibrationFile:
    """Read and check a calibration file; a missing, undecodable or off-schema file is one PlanError line."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"calibration file {p} does not exist; run `hwlm bench calibrate` or fix the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"calibration file {p} is not valid JSON ({exc}); run `hwlm bench calibrate` again") from None
    return parse_calibration(data, str(p))


def write_calibration(doc: dict[str, Any], out: str | Path) -> Path:
    """Write a calibration document atomically (temp file, then rename), after checking it."""
    from hwlm.io import atomic_write_json

    parse_calibration(doc, "the calibration to write")
    atomic_write_json(out, doc)
    return Path(out)
