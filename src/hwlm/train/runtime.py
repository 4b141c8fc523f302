"""Numerics of a run: seeding, the precision decision, autocast, and summed loss over batches.

``precision=auto`` picks bf16 autocast on CUDA (fp16 with loss scaling if the GPU lacks
bf16) and fp32 everywhere else, except on a CPU where a short timed trial of the real
model shows bf16 autocast at least 1.2x faster (CPUs with AMX or AVX512-BF16 can be;
without them bf16 is emulated and slower). The reason is returned in words for the log.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from hwlm.errors import ConfigError

__all__ = ["seed_everything", "PrecisionChoice", "choose_precision", "autocast", "loss_sums"]

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
                _, loss = model(x, y)
            n = int((y != -1).sum())
            total += loss.double() * n  # loss is the mean over the batch's targets
            count += n
    finally:
        model.train(was_training)
    return float(total), count

