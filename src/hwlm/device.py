"""Which torch device hwlm runs on, and why; its clock and its data types.

``select_device("auto")`` prefers CUDA, then PyTorch/XLA (TPU), then Apple MPS, then
the CPU, and returns the reason in words so that commands can print it. ``synchronize`` and
``measure_seconds`` time work on a device honestly (training's precision trial and MFU probe and
every benchmark use them); ``torch_dtype`` maps hwlm's short dtype names to torch's. torch is
imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Any, Callable

from hwlm.errors import HardwareError

__all__ = ["DeviceChoice", "select_device", "synchronize", "measure_seconds", "torch_dtype", "TORCH_DTYPES"]

KNOWN = ("auto", "cpu", "cuda", "mps", "xla")


@dataclass(frozen=True)
class DeviceChoice:
    """A torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``xla``) and why it was chosen."""

    device: str
    reason: str

    @property
    def type(self) -> str:
        return self.device.split(":")[0]


def select_device(preference: str = "auto") -> DeviceChoice:
    """Resolve ``auto``/``cpu``/``cuda[:N]``/``mps``/``xla`` to an available device or raise HardwareError."""
    import torch

    pref = (preference or "auto").lower()
    kind = pref.split(":")[0]
    if kind not in KNOWN:
        raise HardwareError(f"unknown device '{preference}'; choose one of {', '.join(KNOWN)} (cuda:N for a GPU index)")
    has_xla = importlib.util.find_spec("torch_xla") is not None
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if kind == "auto":
        if torch.cuda.is_available():
            return DeviceChoice("cuda", f"CUDA GPU found: {torch.cuda.get_device_name(0)}")
        if has_xla:
            return DeviceChoice("xla", "PyTorch/XLA is installed (TPU or XLA device)")
        if has_mps:
            return DeviceChoice("mps", "Apple MPS backend is available")
        return DeviceChoice("cpu", "no CUDA GPU, XLA or MPS device found; using the CPU")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise HardwareError(f"device '{preference}' asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
        idx = int(pref.split(":")[1]) if ":" in pref else 0
        if idx >= torch.cuda.device_count():
            raise HardwareError(f"device '{preference}' does not exist: {torch.cuda.device_count()} CUDA GPU(s) present")
        return DeviceChoice(pref, "asked for on the command line")
    if kind == "mps" and not has_mps:
        raise HardwareError("device 'mps' asked for, but the MPS backend is not available; use --device cpu or auto")
    if kind == "xla" and not has_xla:
        raise HardwareError("device 'xla' asked for, but torch_xla is not installed; use --device cpu or auto")
    return DeviceChoice(pref, "asked for on the command line")


def synchronize(device: str) -> None:
    """Wait for queued work on ``device`` so wall-clock timings are honest."""
    import torch
    kind = device.split(":")[0]
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()
    elif kind == "xla":
        import torch_xla
        if hasattr(torch_xla, "sync"):
            torch_xla.sync()
        import torch_xla.core.xla_model as xm
        xm.wait_device_ops()


def measure_seconds(fn: Callable[[], Any], device: str, warmup: int = 1, repeats: int = 5,
                    inner: int = 1) -> list[float]:
    """Seconds per call of ``fn``: ``repeats`` samples, each the mean over ``inner`` back-to-back calls.

    On CUDA the samples come from CUDA events (GPU time between two points in the stream),
    so the Python launch loop is not timed; elsewhere from ``perf_counter`` after a sync.
    """
    import torch
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    cuda = device.startswith("cuda")
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1000.0 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            synchronize(device)
            out.append((time.perf_counter() - t0) / inner)
    return out


# hwlm's short names of the torch dtypes it computes in; tf32 is fp32 storage with TF32 tensor-core math.
TORCH_DTYPES = ("fp32", "tf32", "bf16", "fp16", "int8")


def torch_dtype(name: str) -> Any:
    """The torch dtype for a short name (tf32 computes in fp32 storage); unknown -> HardwareError."""
    import torch
    table = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
             "fp16": torch.float16, "int8": torch.int8}
    if name not in table:
        raise HardwareError(f"unknown data type '{name}'; choose one of {', '.join(TORCH_DTYPES)}")
    return table[name]
