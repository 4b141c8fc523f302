"""Which torch device hwlm runs on, and why.

``select_device("auto")`` prefers CUDA, then PyTorch/XLA (TPU), then Apple MPS, then
the CPU, and returns the reason in words so that commands can print it. torch is
imported inside the function: importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from hwlm.errors import HardwareError

__all__ = ["DeviceChoice", "select_device"]

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
