"""Measuring what this machine does, for the benchmarks and the quickstart.

The probes the planner is fed from (:func:`matmul_peak`, :func:`copy_bandwidth`, :func:`kernel_seconds`,
each the fastest of a few samples: :func:`fastest_seconds`) and training memory as the quickstart reports
it (:class:`MemoryWatch`). What the machine *is* stays in :mod:`hwlm.hw`; a device's clock
(``synchronize``, ``measure_seconds``) is :mod:`hwlm.device`'s, and the two things training itself needs
(the quick matmul peak for MFU, the CPU allocator setting) are :mod:`hwlm.train.runtime`'s, since a stage
cannot import a later one. torch is imported inside functions.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from hwlm.device import measure_seconds, torch_dtype

__all__ = ["fastest_seconds", "matmul_peak", "copy_bandwidth", "kernel_seconds", "resident_bytes",
           "load_training_runtime", "MemoryWatch"]





def fastest_seconds(fn: Callable[[], Any], device: str, repeats: int = 7) -> float:
    """Seconds of the fastest of ``repeats`` calls: other processes on a shared machine only add time."""
    return min(measure_seconds(fn, device, warmup=1, repeats=repeats))


def matmul_peak(device: str, precision: str) -> float:
    """FLOP/s of the fastest of several large square products (the sizes of ``quick_matmul_peak``,
    whose median serves MFU): the planner wants what the machine can do, not what a busy moment allowed."""
    import torch

    from hwlm.train.runtime import matmul_side
    n = matmul_side(device, precision)
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
