"""Numerics of a run: seeding, the precision decision, autocast, and summed loss over batches; the
quick matmul peak that training's MFU divides by, and the CPU allocator setting training runs with.

``precision=auto`` picks bf16 autocast on CUDA (fp16 with loss scaling if the GPU lacks
bf16) and fp32 everywhere else, except on a CPU where a short timed trial of the real
model shows bf16 autocast at least 1.2x faster (CPUs with AMX or AVX512-BF16 can be;
without them bf16 is emulated and slower). The reason is returned in words for the log.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from hwlm.device import measure_seconds, torch_dtype
from hwlm.errors import ConfigError, HardwareError

__all__ = ["seed_everything", "PrecisionChoice", "choose_precision", "autocast", "loss_sums", "quick_matmul_peak",
           "matmul_side", "keep_freed_memory"]

CPU_BF16_MIN_SPEEDUP = 1.2  # below this the rounding error of bf16 is not worth it


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class PrecisionChoice:
    """The compute precision of a run and why it was chosen."""

    name: str    # fp32 | bf16 | fp16
    reason: str


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` on ``device_type`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def choose_precision(asked: str, device_type: str, model: nn.Module, batch_size: int, block_size: int) -> PrecisionChoice:
    """Resolve ``auto`` and check an explicit choice against the device."""
    if asked == "fp16" and device_type != "cuda":
        raise ConfigError(f"precision fp16 needs a CUDA GPU (device is {device_type}); use bf16 or fp32")
    if asked != "auto":
        return PrecisionChoice(asked, "asked for")
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "auto: CUDA GPU supports bf16, so bf16 autocast with fp32 weights")
        return PrecisionChoice("fp16", "auto: CUDA GPU lacks bf16, so fp16 autocast with loss scaling")
    if device_type != "cpu":
        return PrecisionChoice("fp32", f"auto: fp32 on {device_type} (mixed precision is not tuned there)")
    return _cpu_trial(model, batch_size, block_size)


def _step_seconds(model: nn.Module, precision: str, x: torch.Tensor) -> float:
    """Seconds of one forward+backward in ``precision``."""
    t0 = time.perf_counter()
    with autocast("cpu", precision):
        _, loss = model(x, x)
    loss.backward()
    return time.perf_counter() - t0


def _cpu_trial(model: nn.Module, batch_size: int, block_size: int, repeats: int = 3) -> PrecisionChoice:
    """Time fp32 against bf16 autocast on the real model; keep bf16 only if clearly faster.

    Both run twice untimed first (the first calls pay one-off kernel set-up and first-touch
    page faults), then alternate, and the fastest of each counts: other work on a shared
    machine only ever adds time.
    """
    rng_state = torch.get_rng_state()  # dropout draws from it: leave the run's RNG untouched
    gen = torch.Generator().manual_seed(0)
    vocab = model.wte.num_embeddings if hasattr(model, "wte") else 256
    x = torch.randint(0, vocab, (batch_size, block_size), generator=gen)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    try:
        for i in range(repeats + 2):
            for name in times:
                t = _step_seconds(model, name, x)
                if i >= 2:
                    times[name].append(t)
    finally:
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(rng_state)
    fp32, bf16 = min(times["fp32"]), min(times["bf16"])
    speedup = fp32 / bf16
    name = "bf16" if speedup >= CPU_BF16_MIN_SPEEDUP else "fp32"
    return PrecisionChoice(name, f"auto: on this CPU a training step took {fp32 * 1e3:.0f} ms in fp32 and "
                                 f"{bf16 * 1e3:.0f} ms with bf16 autocast ({speedup:.2f}x); bf16 needs "
                                 f">={CPU_BF16_MIN_SPEEDUP}x, so {name}")


@torch.no_grad()
def loss_sums(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str,
              precision: str) -> tuple[float, int]:
    """Summed cross-entropy (nats) and number of predicted tokens over ``batches``, in eval mode.

    Without a gradient: during training the parameters require one, and each batch would otherwise
    build a graph whose saved tensors (a training forward's worth, plus the loss's (N, V) gradient)
    stay alive until the next batch replaces them (benchmarks/train_memory.py saw the heap grow by
    three (N, V) fp32 blocks at the first evaluation)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with torch.no_grad(), autocast(device.split(":")[0], precision):
                _, loss = model(x, y, return_logits=False)  # the loss in row chunks, no (N, V) logits held
            n = int((y != -1).sum())
            total += loss.double() * n  # loss is the mean over the batch's targets
            count += n
    finally:
        model.train(was_training)
    return float(total), count


_PEAK_CACHE: dict[tuple[str, str], float] = {}


def matmul_side(device: str, dtype: str) -> int:
    """Side of the square product the matmul probes time: large enough to reach the peak, small enough
    to take well under a second."""
    kind = device.split(":")[0]
    n = {"cuda": 8192, "xla": 4096, "mps": 4096}.get(kind, 1024)
    if kind == "cpu" and dtype in ("bf16", "fp16"):
        n = 512  # without AMX/AVX-512 these can be 10-100x slower than fp32; stay under a second
    return n


def quick_matmul_peak(device: str = "cpu", dtype: str = "fp32") -> float:
    """Large-square matmul throughput in FLOP/s: median of a few timed runs after a warm-up.

    Fast (well under a second on a CPU) and cached per process, for MFU during training.
    ``hwlm bench peak`` is the careful measurement. tf32 is only meaningful on CUDA.
    """
    key = (device, dtype)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    tdt = torch_dtype(dtype)
    if dtype == "int8":
        raise HardwareError("quick_matmul_peak measures floating-point types; use 'hwlm bench peak' for int8")
    kind = device.split(":")[0]
    n = matmul_side(device, dtype)
    a = torch.randn(n, n, device=device).to(tdt)
    b = torch.randn(n, n, device=device).to(tdt)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
    try:
        inner = 10 if kind == "cuda" else 1
        secs = measure_seconds(lambda: torch.mm(a, b), device, warmup=2, repeats=5, inner=inner)
    finally:
        torch.set_float32_matmul_precision(prev)
    peak = 2.0 * n**3 / statistics.median(secs)
    _PEAK_CACHE[key] = peak
    return peak


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory in the heap instead of returning it to the kernel.

    By default each allocation over 128 KiB (adaptively up to 32 MiB) is its own ``mmap``:
    freeing it unmaps it, and the next training step's same-size tensor page-faults every
    4 KiB page again while the kernel zeroes it. On small CPU models that first touch costs as
    much as the arithmetic. With mmap off and no trimming the heap is reused across steps: the
    same effect as ``LD_PRELOAD``ing jemalloc or tcmalloc, which Intel's PyTorch CPU tuning guide
    advises. Process-wide and one-way; returns False where glibc is not the allocator.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's <malloc.h>
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
