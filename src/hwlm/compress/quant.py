"""Post-training quantization: swap a float model's Linears for int8 / int4 modules (gpt-fast style).

The modules themselves live in :mod:`hwlm.model.quantized` (loading a compressed run needs them
before this stage); here is the conversion and the ``auto`` choice between ``w8a8`` and ``w8a16``.

``auto`` times a few decode steps of both int8 forms at batch 1 and batch 8 on this machine and
keeps the one with the smaller summed time per token: which one wins is a property of the machine
(on this AMX/VNNI CPU ``torch._int_mm`` beats ``_weight_int8pack_mm`` at every batch, while on
GPUs weight-only int8 is the batch-1 choice), so it is measured, never assumed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from hwlm.errors import HardwareError
from hwlm.model.quantized import check_int4_shape, int4_kernel, linear_targets, quantize_linear, use_module_decode

__all__ = ["quantize_model", "choose_int8", "compression_section"]


def _check(model: nn.Module, precision: str, group_size: int, include_head: bool) -> None:
    """Every reason the conversion would fail, raised before any layer is changed."""
    if precision != "w4a16":
        return
    device = next(model.parameters()).device
    if int4_kernel(device) is None:
        raise HardwareError(f"this torch has no int4 matmul kernel for {device.type} (CPU needs "
                            f"_weight_int4pack_mm_for_cpu, CUDA compute capability 8.0+): use --method int8 "
                            f"(w8a16), or hwlm export --format onnx --quantize int4 (onnxruntime MatMulNBits)")
    for parent, name in linear_targets(model, include_head):
        lin = getattr(parent, name)
        check_int4_shape(lin.in_features, lin.out_features, group_size)


def quantize_model(model: nn.Module, precision: str, group_size: int = 128, include_head: bool = True) -> nn.Module:
    """Quantize ``model``'s block Linears (and the output layer) in place to ``precision``; returns it."""
    _check(model, precision, group_size, include_head)
    with torch.no_grad():
        for parent, name in linear_targets(model, include_head):
            setattr(parent, name, quantize_linear(getattr(parent, name), precision, group_size))
    use_module_decode(model)
    return model.eval()


def compression_section(method: str, precision: str, **extra: Any) -> dict[str, Any]:
    """The ``compression`` section of a run config, read back by ``hwlm.model.quantized.apply_compression``."""
    return {"version": 1, "method": method, "precision": precision, **extra}


def choose_int8(model: nn.Module, include_head: bool, steps: int = 4) -> tuple[str, dict[str, Any]]:
    """Measure w8a8 and w8a16 decoding on copies of ``model``; return the faster and the timings."""
    from hwlm.compress.table import decode_seconds_per_token

    timings: dict[str, dict[str, float]] = {}
    for precision in ("w8a8", "w8a16"):
        q = quantize_model(copy.deepcopy(model), precision, include_head=include_head)
        timings[precision] = {f"b{b}": decode_seconds_per_token(q, b, steps, prompt_len=8) for b in (1, 8)}
        del q
    total = {p: sum(t.values()) for p, t in timings.items()}
    choice = min(total, key=total.get)
    return choice, {"asked": "auto", "chosen": choice, "rule": "smaller sum of s/token at batch 1 and 8",
                    "seconds_per_token": timings}
