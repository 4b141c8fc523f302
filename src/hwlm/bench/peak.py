"""``hwlm bench peak``: what this device can actually do, per data type.

Measured: square-matmul FLOP/s for each data type the device supports (fp32, tf32,
bf16, fp16, int8 via ``torch._int_mm`` on CUDA and CPUs, what w8a8 layers call), device
memory bandwidth from one large copy (bytes read + bytes written), cache bandwidth from a
copy that fits in cache (the roof of work whose operands stay there), and on CUDA pinned host-to-device bandwidth. Each
figure is the median of ``repeats`` timed samples after warm-up, stored with its spread
(min, max, IQR, count). A data type the device cannot run fast, or at all, is skipped
and the reason is written into the record's findings rather than hidden.

Conventions: an n x n x n matmul is 2 n^3 FLOPs (a multiply-add counts 2); fp32 is
measured with TF32 *off* ("highest" precision) so that it is true fp32, and tf32 with it on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from hwlm.bench.energy import EnergyMeter
from hwlm.bench.records import make_record, spread
from hwlm.errors import HardwareError
from hwlm.device import TORCH_DTYPES as DTYPES
from hwlm.device import measure_seconds, synchronize, torch_dtype

__all__ = ["PeakConfig", "run_peak", "format_peak", "is_oom", "adaptive_inner"]


@dataclass
class PeakConfig:
    """What ``hwlm bench peak`` measures, and how hard."""

    device: str = "auto"
    dtypes: list[str] = field(default_factory=lambda: list(DTYPES))
    size: int | None = None         # matmul n; None: 8192 on CUDA, 2048 on CPU (fills caches and cores)
    repeats: int = 10
    warmup: int = 2
    membw_mib: int | None = None    # copy size; None: 2048 MiB on CUDA, 256 MiB elsewhere (capped by free RAM)
    cache_kib: int | None = None    # cache-resident copy; None: 512 KiB on a CPU (src + dst fit an L2), 8 MiB on CUDA (L2)
    h2d_mib: int | None = None      # pinned host->device copy; None: 1024 MiB (CUDA only)
    max_call_s: float = 2.0         # on CPU, a dtype whose single matmul takes longer is skipped as slow
    energy: str = "auto"
    tdp_w: float | None = None

    def __post_init__(self) -> None:
        for d in self.dtypes:
            if d not in DTYPES:
                raise HardwareError(f"unknown data type '{d}'; choose among {', '.join(DTYPES)}")
        if self.repeats < 1 or self.warmup < 0:
            raise HardwareError(f"--repeats must be >= 1 and --warmup >= 0, got {self.repeats} and {self.warmup}")
        if self.cache_kib is not None and self.cache_kib < 4:
            raise HardwareError(f"--cache-kib must be at least 4, got {self.cache_kib}")
        if self.size is not None and self.size < 16:
            raise HardwareError(f"--size must be at least 16, got {self.size}")


def is_oom(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors on any device (and plain MemoryError)."""
    import torch
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if isinstance(exc, MemoryError) or (oom_types and isinstance(exc, oom_types)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def adaptive_inner(seconds_per_call: float, target_s: float = 0.05, cap: int = 100) -> int:
    """Calls per timed sample so one sample lasts about ``target_s`` (amortizes launch overhead).

    >>> adaptive_inner(0.001), adaptive_inner(0.2)
    (50, 1)
    """
    if seconds_per_call <= 0:
        return cap
    return max(1, min(cap, round(target_s / seconds_per_call)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _why_skip(dtype: str, kind: str) -> str | None:
    """A reason not to try ``dtype`` on a device kind, or None to try it."""
    if dtype == "tf32" and kind != "cuda":
        return "tf32 is a CUDA tensor-core mode"
    if dtype == "int8" and kind not in ("cuda", "cpu"):
        return f"torch._int_mm has no {kind} kernel"
    if dtype == "bf16" and kind == "cuda":
        import torch
        if not torch.cuda.is_bf16_supported():
            return "this GPU has no native bf16"
    return None


def _matmul_op(dtype: str, n: int, device: str) -> Callable[[], Any]:
    import torch
    if dtype == "int8":
        a = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=device)
        # cuBLASLt's fast int8 kernels want the second operand column-major ("TN"): on an H200
        # a row-major b ran at 128 TOPS, its transpose view at 957 TOPS.
        b = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=device).t()
        return lambda: torch._int_mm(a, b)
    tdt = torch_dtype(dtype)
    a = torch.randn(n, n, device=device, dtype=tdt)
    b = torch.randn(n, n, device=device, dtype=tdt)
    return lambda: torch.mm(a, b)


def _measure_matmul(cfg: PeakConfig, device: str, dtype: str, n: int) -> dict[str, Any]:
    """One data type: warm up, pick calls per sample, time, and meter energy."""
    import time

    import torch
    kind = device.split(":")[0]
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
    try:
        op = _matmul_op(dtype, n, device)
        t0 = time.perf_counter()
        op()
        synchronize(device)
        first = time.perf_counter() - t0
        if kind == "cpu" and first > cfg.max_call_s:
            raise _Slow(f"one {n}x{n} {dtype} matmul took {first:.1f} s (> {cfg.max_call_s:g} s): no fast path here")
        per_call = min(measure_seconds(op, device, warmup=cfg.warmup, repeats=2))
        inner = adaptive_inner(per_call, *_sample_target(kind, cfg.repeats))
        meter = EnergyMeter(device, cfg.energy, cfg.tdp_w)
        meter.start()
        secs = measure_seconds(op, device, warmup=0, repeats=cfg.repeats, inner=inner)
        energy = meter.stop()
    finally:
        torch.set_float32_matmul_precision(prev)
    flops = 2.0 * n**3
    rates = [flops / s for s in secs]
    work = flops * inner * cfg.repeats
    return {"name": "matmul", "dtype": dtype, "n": n, "inner": inner, "seconds": secs,
            "flops_per_s": spread(rates), "energy": energy.to_dict(),
            "flops_per_joule": work / energy.joules if energy.joules else None}


def _sample_target(kind: str, repeats: int) -> tuple[float, int]:
    """(seconds per sample, most calls per sample). On CUDA the timed window of one data type
    lasts about a second, long enough for NVML's energy counter, which updates only every
    few tens of milliseconds (a 15 ms window once read as 2.4 kW on a 700 W GPU)."""
    if kind == "cuda":
        return max(0.05, 1.0 / repeats), 2000
    return 0.05, 100


class _Slow(Exception):
    """A data type runs, but too slowly on this device to be worth timing."""


def _measure_copy(cfg: PeakConfig, device: str, nbytes: int, h2d: bool) -> dict[str, Any]:
    import torch
    numel = nbytes // 4
    if h2d:
        src = torch.empty(numel, dtype=torch.float32).pin_memory()
        src.fill_(1.0)
        dst = torch.empty(numel, dtype=torch.float32, device=device)
        moved = float(nbytes)  # host-to-device: bytes crossing the link
    else:
        src = torch.ones(numel, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        moved = 2.0 * nbytes  # a copy reads every byte and writes every byte
    op = (lambda: dst.copy_(src, non_blocking=True)) if h2d else (lambda: dst.copy_(src))
    per_call = min(measure_seconds(op, device, warmup=max(1, cfg.warmup), repeats=2))
    inner = adaptive_inner(per_call)
    secs = measure_seconds(op, device, warmup=0, repeats=cfg.repeats, inner=inner)
    return {"name": "h2d" if h2d else "membw", "bytes": nbytes, "bytes_moved_per_call": moved, "inner": inner,
            "seconds": secs, "bytes_per_s": spread([moved / s for s in secs])}


def _cache_size(cfg: PeakConfig, kind: str) -> int:
    """Bytes of one buffer of the cache-resident copy: source and destination together fit the last
    private cache (a CPU core's L2 is 1-2 MiB on current x86 and Arm server parts) or a GPU's L2."""
    return (cfg.cache_kib or (8192 if kind == "cuda" else 512)) * 1024


def _copy_size(cfg: PeakConfig, kind: str, findings: list[str]) -> int:
    mib = cfg.membw_mib or (2048 if kind == "cuda" else 256)
    if kind == "cpu":
        from hwlm.hw import memory_bytes
        _, avail = memory_bytes()
        # two buffers of this size must fit with room to spare
        if avail is not None and mib * 2**20 * 2 > avail // 2:
            new = max(1, avail // 4 // 2**20)
            findings.append(f"membw: {mib} MiB copy would not fit in free RAM; used {new} MiB")
            mib = new
    return int(mib) * 2**20


def run_peak(cfg: PeakConfig) -> dict[str, Any]:
    """Run the peak benchmark on ``cfg.device`` and return its record (not yet written)."""
    from hwlm.device import select_device
    choice = select_device(cfg.device)
    device, kind = choice.device, choice.type
    n = cfg.size or (8192 if kind == "cuda" else 4096 if kind in ("mps", "xla") else 2048)
    samples: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"device": device}
    findings: list[str] = []
    for dtype in cfg.dtypes:
        reason = _why_skip(dtype, kind)
        if reason is None:
            try:
                s = _measure_matmul(cfg, device, dtype, n)
            except _Slow as exc:
                reason = f"skipped as slow: {exc}"
            except (RuntimeError, MemoryError, NotImplementedError) as exc:
                reason = (f"out of memory at n={n}" if is_oom(exc) else f"failed: {_first_line(exc)}")
                _free(kind)
        if reason is not None:
            findings.append(f"matmul {dtype} on {kind}: {reason}")
            continue
        samples.append(s)
        summary[f"matmul_{dtype}_flops"] = s["flops_per_s"]["median"]
        summary[f"matmul_{dtype}_iqr_pct"] = 100.0 * s["flops_per_s"]["iqr"] / s["flops_per_s"]["median"]
        if s["flops_per_joule"]:
            summary[f"matmul_{dtype}_flops_per_joule"] = s["flops_per_joule"]
            summary[f"matmul_{dtype}_energy_method"] = s["energy"]["method"]
    _copies(cfg, device, kind, samples, summary, findings)
    config = {**cfg.__dict__, "device": device, "device_reason": choice.reason, "size": n}
    return make_record("peak", config, samples, summary, findings)


def _copies(cfg: PeakConfig, device: str, kind: str, samples: list, summary: dict, findings: list) -> None:
    # The cache copy is the roof of work whose operands stay in cache (a small model's decode step reads
    # weights that fit in L2/L3): without it such points plot above the DRAM roof.
    jobs = [("membw", _copy_size(cfg, kind, findings), False), ("cachebw", _cache_size(cfg, kind), False)]
    if kind == "cuda":
        jobs.append(("h2d", (cfg.h2d_mib or 1024) * 2**20, True))
    else:
        findings.append(f"h2d: no host-to-device link on {kind}; not measured")
    for name, nbytes, h2d in jobs:
        try:
            s = _measure_copy(cfg, device, nbytes, h2d)
        except (RuntimeError, MemoryError) as exc:
            findings.append(f"{name}: {'out of memory' if is_oom(exc) else _first_line(exc)} at {nbytes >> 20} MiB")
            _free(kind)
            continue
        s["name"] = name
        samples.append(s)
        summary[f"{name}_bytes_per_s"] = s["bytes_per_s"]["median"]
        summary[f"{name}_iqr_pct"] = 100.0 * s["bytes_per_s"]["iqr"] / s["bytes_per_s"]["median"]


def _free(kind: str) -> None:
    import gc
    gc.collect()
    if kind == "cuda":
        import torch
        torch.cuda.empty_cache()


def format_peak(record: dict[str, Any]) -> str:
    """A short table of a peak record: value, spread and sample count per measurement."""
    lines = [f"peak on {record['config']['device']} ({record['config']['device_reason']})"]
    for s in record["samples"]:
        if s["name"] == "matmul":
            st, unit, scale = s["flops_per_s"], "TFLOP/s", 1e12
            label = f"matmul {s['dtype']:<5} n={s['n']}"
        else:
            st, unit, scale = s["bytes_per_s"], "GB/s", 1e9
            what = {"membw": "copy", "cachebw": "cache copy", "h2d": "host->device"}.get(s["name"], s["name"])
            size = f"{s['bytes'] >> 20} MiB" if s["bytes"] >= 2**20 else f"{s['bytes'] >> 10} KiB"
            label = f"{what} {size}"
        line = (f"  {label:<26} {st['median'] / scale:10.3f} {unit:<8} min {st['min'] / scale:.3f} "
                f"max {st['max'] / scale:.3f} IQR {st['iqr'] / scale:.3f} (n={st['count']} x {s['inner']} calls)")
        if s.get("energy") and s["energy"]["joules"]:
            e = s["energy"]
            line += f"; {e['watts']:.0f} W [{e['method']}]"
        lines.append(line)
    lines.extend(f"  not measured: {f}" for f in record["findings"])
    return "\n".join(lines)

