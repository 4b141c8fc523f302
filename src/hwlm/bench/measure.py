"""Measuring helpers shared by every benchmark, the quickstart and training's MFU probe.

Timing (:func:`synchronize`, :func:`measure_seconds`, :func:`fastest_seconds`), the probes the planner is
fed from (:func:`quick_matmul_peak`, :func:`matmul_peak`, :func:`copy_bandwidth`, :func:`kernel_seconds`)
and training memory as the quickstart reports it (:class:`MemoryWatch`). Detection of what the machine
*is* stays in :mod:`hwlm.hw`; this module measures what it *does*. torch is imported inside functions.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

from hwlm.errors import HardwareError

__all__ = ["synchronize", "measure_seconds", "fastest_seconds", "quick_matmul_peak", "matmul_peak",
           "copy_bandwidth", "kernel_seconds", "torch_dtype", "resident_bytes", "load_training_runtime",
           "MemoryWatch"]


def torch_dtype(name: str) -> Any:
    """The torch dtype for a short name (tf32 computes in fp32 storage); unknown -> HardwareError."""
    import torch

    table = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
             "fp16": torch.float16, "int8": torch.int8}
    if name not in table:
        raise HardwareError(f"unknown data type '{name}'; choose one of {', '.join(table)}")
    return table[name]


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA, MPS, XLA); a no-op on the CPU."""
    import torch

    kind = device.split(":")[0]
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()
    elif kind == "xla":
        import torch_xla.core.xla_model as xm  # type: ignore[import-not-found]
        xm.wait_device_ops()


def measure_seconds(fn: Callable[[], Any], device: str, warmup: int = 1, repeats: int = 5,
                    inner: int = 1) -> list[float]:
    """Seconds per call of ``fn`` for each of ``repeats`` samples (each the mean of ``inner`` calls),
    after ``warmup`` untimed calls, with the device synchronized around every sample."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        out.append((time.perf_counter() - t0) / inner)
    return out


def fastest_seconds(fn: Callable[[], Any], device: str, repeats: int = 7) -> float:
    """Seconds of the fastest of ``repeats`` calls: other processes on a shared machine only add time."""
    return min(measure_seconds(fn, device, warmup=1, repeats=repeats))


def _square_side(device: str, dtype: str) -> int:
    kind = device.split(":")[0]
    n = {"cuda": 8192, "xla": 4096, "mps": 4096}.get(kind, 1024)
    if kind == "cpu" and dtype in ("bf16", "fp16"):
        n = 512  # without AMX/AVX-512 these can be 10-100x slower than fp32; stay under a second
    return n


_PEAK_CACHE: dict[tuple[str, str], float] = {}


def quick_matmul_peak(device: str = "cpu", dtype: str = "fp32") -> float:
    """Large-square matmul throughput in FLOP/s: median of a few timed runs after a warm-up.

    Fast (well under a second on a CPU) and cached per process, for MFU during training.
    ``hwlm bench peak`` is the careful measurement. tf32 is only meaningful on CUDA.
    """
    key = (device, dtype)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    import torch

    if dtype == "int8":
        raise HardwareError("quick_matmul_peak measures floating-point types; use 'hwlm bench peak' for int8")
    tdt = torch_dtype(dtype)
    n = _square_side(device, dtype)
    a = torch.randn(n, n, device=device).to(tdt)
    b = torch.randn(n, n, device=device).to(tdt)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
    try:
        inner = 10 if device.startswith("cuda") else 1
        secs = measure_seconds(lambda: torch.mm(a, b), device, warmup=2, repeats=5, inner=inner)
    finally:
        torch.set_float32_matmul_precision(prev)
    peak = 2.0 * n**3 / statistics.median(secs)
    _PEAK_CACHE[key] = peak
    return peak


def matmul_peak(device: str, precision: str) -> float:
    """FLOP/s of the fastest of several large square products (the sizes of :func:`quick_matmul_peak`,
    whose median serves MFU): the planner wants what the machine can do, not what a busy moment allowed."""
    import torch

    n = _square_side(device, precision)
    a = torch.randn(n, n, device=device).to(torch_dtype(precision))
    b = torch.randn(n, n, device=device).to(torch_dtype(precision))
    return 2.0 * n**3 / fastest_seconds(lambda: torch.mm(a, b), device, repeats=5)


def copy_bandwidth(device: str, elements: int = 16 * 2**20) -> float:
    """Bytes/s of a float32 device-to-device copy (read + write): 64 MiB by default, the ``hwlm bench peak``
    convention; a smaller buffer measures the cache it fits in (a small model's activations, say)."""
    import torch

    src = torch.ones(max(elements, 1024), dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    inner = max(1, int(2**24 // src.numel()))  # about 64 MiB moved per sample, so a sample is not all timer

    def copies() -> None:
        for _ in range(inner):
            dst.copy_(src)
    return 2.0 * src.numel() * 4 * inner / fastest_seconds(copies, device)


def kernel_seconds(device: str, n: int = 100) -> float:
    """Host seconds per eager kernel with autograd: a chain of ``n`` tiny multiplications and its
    backward (2n + 2 kernels), so the arithmetic is nothing and dispatch, autograd bookkeeping and
    (on a GPU) the launch are all that is timed."""
    import torch

    x = torch.ones(8, 8, device=device, requires_grad=True)

    def chain() -> None:
        y = x
        for _ in range(n):
            y = y * 1.0001
        y.sum().backward()
    return fastest_seconds(chain, device) / (2 * n + 2)


def resident_bytes() -> int:
    """Anonymous resident bytes of this process (Linux ``RssAnon``), else the whole resident set."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import psutil
    return int(psutil.Process().memory_info().rss)


def load_training_runtime() -> None:
    """Load what ``hwlm train`` loads once per process and never frees, so a memory baseline taken after
    this call leaves it out: the optimizer's first construction imports ``torch._dynamo`` (about 67 MiB of
    heap on torch 2.13), the logger TensorBoard's writer, checkpoints safetensors, and the first backward
    starts the autograd engine. Measured once in benchmarks/train_memory.py; none of it grows with the model."""
    import safetensors.torch  # noqa: F401
    import torch

    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pass  # training runs without TensorBoard then, and so does this
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], fused=True)
    (p * 2).sum().backward()
    opt.step()


class MemoryWatch:
    """Memory that training itself adds: on CUDA the allocator's peak above what was allocated before,
    elsewhere the peak anonymous resident memory (``RssAnon`` on Linux: heap, not the pages of torch's
    libraries that the first backward or optimizer step maps in; the whole resident set elsewhere),
    sampled every 20 ms, above its value just before training (after :func:`load_training_runtime`).
    The process's earlier peaks (tokenizer training, the corpus) and the runtime stay out of it, so it
    compares with the formulas' training state (:func:`hwlm.formulas.training_memory`)."""

    def __init__(self, device: str) -> None:
        self.device, self.peak, self.base = device, 0, 0
        self._stop: threading.Event | None = None

    def __enter__(self) -> "MemoryWatch":
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = int(torch.cuda.memory_allocated(self.device))
            return self
        load_training_runtime()
        self.base = self.peak = resident_bytes()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, resident_bytes())
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is None:
            import torch
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def added(self) -> int:
        return max(0, self.peak - self.base)
