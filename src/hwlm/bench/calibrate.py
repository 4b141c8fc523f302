"""``hwlm bench calibrate``: turn bench records into the planner's calibration file.

Each measured rate becomes one entry per (dtype, phase) (the file's schema, writer and reader are
:mod:`hwlm.calibration`):

| phase   | measured rate (from)                                        | unit   |
|---------|-------------------------------------------------------------|--------|
| matmul  | matmul_<dtype>_flops (peak record)                           | FLOP/s |
| membw   | membw_bytes_per_s (peak record)                              | B/s    |
| train   | achieved_flops_per_s (train record; dtype = its precision)  | FLOP/s |
| prefill | max_prefill_flops_per_s (infer record)                       | FLOP/s |
| decode  | max_decode_bytes_per_s (infer record)                        | B/s    |
| decode_rows  | each cell's decode_bytes_per_s, rows = its batch (infer)   | B/s    |
| prefill_rows | each cell's prefill_flops_per_s, rows = batch x prompt     | FLOP/s |

The ``_rows`` phases are a curve: how a rate moves from one row through each matrix product to many. On
a CPU a one-row step is a matrix-vector product and two rows or more a matrix product, whose small-row
kernels stream the weights more slowly (mid's 50,304 x 384 output layer: 15 ms a step at one row, 26 ms at
two to four), so one decode rate, batch 1's, priced every batch as a batch-1 step plus its products.

An infer record of a compressed run (``hwlm bench infer --run``) names its weight format (``w8a8``,
``w8a16``, ``w4a16``) as its precision, and its entries carry that name as their dtype: the planner
looks a format's own entries up first. Its prefill efficiency is relative to the matmul peak of the
data type the format computes in (:func:`hwlm.calibration.compute_dtype`: int8 for w8a8 where it was
measured, else 16-bit), its decode efficiency to memory bandwidth, like any other. Each entry an infer
record gives also names its ``engine`` (``hwlm`` for ``--backend torch``, ``onnxruntime``) and the
``kv_dtype`` its KV cache was kept in (the record's ``config.kv_dtype``: fp32 for a compressed run), so the
planner prices the cache that engine really kept (:mod:`hwlm.plan.kv_cache`).

``efficiency`` = measured / reference, where the reference is

* the **datasheet** peak of a catalog device (``--hardware h100-sxm``): dense FLOP/s for the
  entry's dtype, memory bandwidth for membw and decode. The bench stage does not import
  the planner; the caller passes the datasheet figures in (the CLI reads them from the
  catalog), so efficiency means exactly what the planner's priors mean;
* for ``--hardware this-machine`` (no catalog entry), the **measured peak** of this machine:
  matmul and membw entries are 1.0 by definition and carry the absolute rate in
  ``measured``; train and prefill are relative to the measured matmul peak of their dtype,
  decode to the measured copy bandwidth. A planner using a this-machine calibration
  should take the matmul/membw ``measured`` values as the device's peaks and multiply them
  by the train/prefill/decode efficiencies.

Every entry also carries ``reference`` ("datasheet" or "measured-peak"),
``reference_value`` and ``source``. When several records give the same (dtype, phase)
the highest rate is kept (the best this machine was seen to reach) and the others are
listed in the notes. Copy bandwidth (membw) has no data type and is written once per
dtype the planner may look up (fp32, tf32, bf16, fp16, fp8, int8). Efficiencies above
1.5 (a cache-resident toy model "beating" DRAM bandwidth) are not written: the planner
rejects them, and the notes say why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hwlm.bench.records import load_record
from hwlm.calibration import MAX_EFFICIENCY, THIS_MACHINE, calibration_document, compute_dtype
from hwlm.errors import DataError

__all__ = ["Datasheet", "calibrate", "calibrate_files"]

MEMBW_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")


class Datasheet:
    """Datasheet peaks of one device: dense FLOP/s per dtype and memory bandwidth in bytes/s."""

    def __init__(self, flops: dict[str, float], memory_bw: float | None, name: str = "") -> None:
        self.flops, self.memory_bw, self.name = dict(flops), memory_bw, name


def _measured_by(rec: dict[str, Any]) -> dict[str, str]:
    """An infer record's engine and the data type its KV cache was kept in (``config.kv_dtype``); {} otherwise.
    ``hwlm bench infer`` runs hwlm's own loop (``--backend torch``) or onnxruntime (``--backend onnx``)."""
    c = rec.get("config") or {}
    if rec.get("benchmark") != "infer" or not c.get("kv_dtype"):
        return {}
    return {"engine": "hwlm" if c.get("backend", "torch") == "torch" else "onnxruntime", "kv_dtype": c["kv_dtype"]}


def _rates(rec: dict[str, Any], label: str) -> list[tuple[str, str, float, str, int | None]]:
    """(dtype, phase, measured rate, unit, rows of a curve point or None) found in one record."""
    s, c, out = rec["summary"], rec["config"], []
    if rec["benchmark"] == "peak":
        for key, val in s.items():
            if key.startswith("matmul_") and key.endswith("_flops") and isinstance(val, (int, float)):
                out.append((key[len("matmul_"):-len("_flops")], "matmul", float(val), "FLOP/s", None))
        if isinstance(s.get("membw_bytes_per_s"), (int, float)):
            out.append(("any", "membw", float(s["membw_bytes_per_s"]), "B/s", None))
    elif rec["benchmark"] == "train" and s.get("achieved_flops_per_s"):
        out.append((c["precision"], "train", float(s["achieved_flops_per_s"]), "FLOP/s", None))
    elif rec["benchmark"] == "infer":
        if s.get("max_prefill_flops_per_s"):
            out.append((c["precision"], "prefill", float(s["max_prefill_flops_per_s"]), "FLOP/s", None))
        if s.get("max_decode_bytes_per_s"):
            out.append((c["precision"], "decode", float(s["max_decode_bytes_per_s"]), "B/s", None))
        for cell in rec.get("samples") or []:  # the curve: one point per grid cell
            cs = cell.get("summary") or {}
            if cell.get("name") != "infer_cell":
                continue
            if cs.get("prefill_flops_per_s"):
                out.append((c["precision"], "prefill_rows", float(cs["prefill_flops_per_s"]), "FLOP/s",
                            int(cell["batch"]) * int(cell["prompt_len"])))
            if cs.get("decode_bytes_per_s"):
                out.append((c["precision"], "decode_rows", float(cs["decode_bytes_per_s"]), "B/s", int(cell["batch"])))
    return out


def _machine_key(rec: dict[str, Any]) -> tuple:
    m = rec.get("machine") or {}
    return ((m.get("cpu") or {}).get("model"), tuple(g.get("name") for g in m.get("gpus") or []))


def calibrate(records: Sequence[tuple[str, dict[str, Any]]], device: str,
              datasheet: Datasheet | None = None) -> dict[str, Any]:
    """Build the calibration document from ``(label, record)`` pairs.

    ``datasheet`` is required unless ``device`` is ``this-machine``.
    """
    if not records:
        raise DataError("no bench records given; pass one or more files written by 'hwlm bench peak/train/infer'")
    if device != THIS_MACHINE and datasheet is None:
        raise DataError(f"hardware '{device}' needs datasheet peaks; use a catalog id or --hardware {THIS_MACHINE}")
    keys = {_machine_key(r) for _, r in records}
    if len(keys) > 1:
        raise DataError(f"the records come from {len(keys)} different machines; calibrate one machine at a time")
    best: dict[tuple[str, str, int | None], tuple[float, str, str, dict[str, str]]] = {}
    notes: list[str] = []
    for label, rec in records:
        found = _rates(rec, label)
        if not found:
            notes.append(f"{label}: no usable rate in this {rec['benchmark']} record")
        for dtype, phase, rate, unit, rows in found:
            src = f"bench record {label}, {rec.get('created', '?')}"
            prev = best.get((dtype, phase, rows))
            if prev is not None:
                at = phase if rows is None else f"{phase} at {rows} rows"
                notes.append(f"{at}/{dtype}: kept the higher of {prev[0]:.4g} ({prev[2]}) and {rate:.4g} ({src})")
            if prev is None or rate > prev[0]:
                best[(dtype, phase, rows)] = (rate, unit, src, _measured_by(rec))
    entries = []
    for (dtype, phase, rows), (rate, unit, src, by) in best.items():
        ref, ref_kind = _reference(dtype, phase, best, datasheet)
        if ref is None:
            notes.append(f"{phase}/{dtype}: no {ref_kind} reference to divide by; not written")
            continue
        eff = rate / ref
        if eff > MAX_EFFICIENCY:
            at = phase if rows is None else f"{phase} at {rows} rows"
            notes.append(f"{at}/{dtype}: measured {rate:.4g} {unit} is {eff:.2f}x the {ref_kind} reference "
                         f"(cache-resident workload?); not written")
            continue
        # Copy bandwidth has no data type; the planner looks entries up by (dtype, phase), so
        # membw is written once per data type it may ask for.
        for dt in (MEMBW_DTYPES if dtype == "any" else (dtype,)):
            entries.append({"device": device, "dtype": dt, "phase": phase, "efficiency": eff, "measured": rate,
                            "unit": unit, "reference": ref_kind, "reference_value": ref, "source": src,
                            **({} if rows is None else {"rows": rows}), **by})
    if not entries:
        raise DataError("none of the records yields a calibration entry; run 'hwlm bench peak' (and train/infer) first")
    return calibration_document(device, entries, records[0][1].get("machine", {}), notes)


def _reference(dtype: str, phase: str, best: dict, datasheet: Datasheet | None) -> tuple[float | None, str]:
    bandwidth = phase in ("membw", "decode", "decode_rows")
    if datasheet is not None:
        if bandwidth:
            return datasheet.memory_bw, "datasheet"
        return datasheet.flops.get(compute_dtype(dtype, datasheet.flops) or dtype), "datasheet"
    if phase in ("matmul", "membw"):
        return best[(dtype, phase, None)][0], "measured-peak"
    measured = [d for d, ph, _ in best if ph == "matmul"]
    key = ("any", "membw", None) if bandwidth else (compute_dtype(dtype, measured) or dtype, "matmul", None)
    return (best[key][0] if key in best else None), "measured-peak"


def calibrate_files(paths: Sequence[str | Path], device: str, datasheet: Datasheet | None = None) -> dict[str, Any]:
    """Load record files strictly and :func:`calibrate` them."""
    return calibrate([(str(p), load_record(p)) for p in paths], device, datasheet)
