"""A planner :class:`~hwlm.plan.catalog.Device` for *this machine*, built from measured numbers.

The catalog holds datasheet parts; the machine you are sitting at is rarely one of them (a
laptop CPU, a power-capped GPU). Its device is built on the fly from measurements, so that
``hwlm plan ... --hardware this-machine`` and ``hwlm quickstart`` predict what this machine does:

* peak FLOP/s per data type: the measured matmul rate (``hwlm bench peak``, or
  :func:`hwlm.train.runtime.quick_matmul_peak`), so efficiencies are relative to what the machine *can*
  do, the convention of ``hwlm bench calibrate --hardware this-machine``;
* memory bandwidth: the measured copy bandwidth;
* memory capacity: the detected RAM (CPU) or GPU memory;
* optionally, two figures that matter for small models (:class:`MachineDevice`): the host
  seconds per kernel (``op_overhead_s``, a tiny autograd chain timed by ``hwlm quickstart``) and
  the copy bandwidth at the size of one activation tensor (``act_bw``: a small model's activations
  stay in cache, which is several times faster than the 64 MiB DRAM copy).

This module is torch-free: the caller measures (``hwlm.bench``/``hwlm.hw``) and passes numbers.

    >>> dev = machine_device({"fp32": 1.0e11}, memory_bw=2.0e10, memory_bytes=16e9, name="laptop")
    >>> dev.id, dev.peak_flops("fp32")
    ('this-machine', 100000000000.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from hwlm.calibration import THIS_MACHINE, is_this_machine
from hwlm.errors import PlanError
from hwlm.plan.catalog import KINDS, Device, normalize_dtype
from hwlm.plan.efficiency import Calibration, load_calibration

__all__ = ["THIS_MACHINE", "MachineDevice", "machine_device", "device_from_calibration", "is_this_machine"]


@dataclass(frozen=True)
class MachineDevice(Device):
    """A measured :class:`Device` with the small-model figures a datasheet lacks (None: use the prior)."""

    op_overhead_s: float | None = None   # host seconds per eager kernel (dispatch + autograd)
    act_bw: float | None = None          # bytes/s of a copy the size of one activation tensor


def machine_device(flops: Mapping[str, float], memory_bw: float, memory_bytes: float, *, name: str = "this machine",
                   kind: str = "cpu", source: str = "measured on this machine", tdp_w: float | None = None,
                   op_overhead_s: float | None = None, act_bw: float | None = None) -> MachineDevice:
    """A :class:`Device` whose peaks are measured rates (FLOP/s per dtype, bytes/s, bytes); optionally the
    measured seconds per kernel and the activation-sized copy bandwidth (see :class:`MachineDevice`)."""
    clean = {}
    for dtype, value in flops.items():
        if not isinstance(value, (int, float)) or value <= 0:
            raise PlanError(f"measured {dtype} peak {value!r} is not a positive FLOP/s figure; measure it again "
                            "with `hwlm bench peak`")
        clean[normalize_dtype(dtype)] = float(value)
    if not clean:
        raise PlanError("no measured matmul peak for this machine; run `hwlm bench peak` and calibrate")
    for what, value in (("memory bandwidth", memory_bw), ("memory size", memory_bytes)):
        if not isinstance(value, (int, float)) or value <= 0:
            raise PlanError(f"this machine's {what} {value!r} is not a positive number; run `hwlm bench peak`")
    for what, value in (("seconds per kernel", op_overhead_s), ("activation copy bandwidth", act_bw)):
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise PlanError(f"this machine's {what} {value!r} is not a positive number; measure it again")
    if kind not in KINDS:
        raise PlanError(f"device kind {kind!r} is not one of {', '.join(KINDS)}")
    sources = {"flops": f"{source} (matmul peak)", "memory_bw": f"{source} (copy bandwidth)",
               "memory_bytes": f"{source} (detected memory)", "devices_per_node": "one machine"}
    if tdp_w is not None:
        sources["tdp_w"] = "user or detected power limit"
    if op_overhead_s is not None:
        sources["op_overhead_s"] = f"{source} (tiny autograd chain: seconds per kernel)"
    if act_bw is not None:
        sources["act_bw"] = f"{source} (copy of one activation tensor)"
    return MachineDevice(id=THIS_MACHINE, name=name, vendor="local", kind=kind, flops=clean,
                         memory_bytes=float(memory_bytes), memory_bw=float(memory_bw), devices_per_node=1,
                         sources=sources, tdp_w=tdp_w, op_overhead_s=op_overhead_s, act_bw=act_bw)


def _machine_facts(machine: Mapping[str, Any]) -> tuple[str, str, float | None]:
    """(name, kind, memory bytes) from the ``machine`` block of a bench record / calibration."""
    gpus = machine.get("gpus") or []
    if gpus:
        g = gpus[0] if isinstance(gpus[0], Mapping) else {}
        mem = g.get("memory_bytes") or g.get("total_memory_bytes")
        return str(g.get("name") or "GPU"), "gpu", float(mem) if mem else None
    cpu = machine.get("cpu") or {}
    mem = machine.get("memory_bytes") or machine.get("total_memory_bytes") or (machine.get("memory") or {}).get("total")
    return str(cpu.get("model") or "CPU"), "cpu", float(mem) if mem else None


def device_from_calibration(calibration: str | Calibration | Any) -> Device:
    """The device a ``this-machine`` calibration describes: its matmul and membw ``measured`` rates
    become the peaks (their efficiencies are 1.0 by construction, see ``hwlm.bench.calibrate``)."""
    cal = load_calibration(calibration)
    if cal is None:
        raise PlanError("--hardware this-machine needs --calibration FILE (from `hwlm bench calibrate --hardware "
                        "this-machine`)")
    mine = [e for e in cal.entries if e.device == THIS_MACHINE]
    if not mine:
        raise PlanError(f"calibration file {cal.path} has no '{THIS_MACHINE}' entries; calibrate with "
                        f"`hwlm bench calibrate --hardware {THIS_MACHINE}` or pass a catalog --hardware")
    flops = {e.dtype: e.measured for e in mine if e.phase == "matmul" and e.measured}
    bws = [e.measured for e in mine if e.phase == "membw" and e.measured]
    if not flops or not bws:
        raise PlanError(f"calibration file {cal.path} lacks the measured matmul or membw rate of this machine; "
                        "include a `hwlm bench peak` record when calibrating")
    name, kind, mem = _machine_facts(cal.machine)
    return machine_device(flops, bws[0], mem or 1e12, name=name, kind=kind,
                          source=f"calibration file {cal.path}")
