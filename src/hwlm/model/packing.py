"""Linear weights packed once for oneDNN: CPU inference reads them at memory speed.

``pack_linears(model)`` reorders each plain fp32 (of at least :data:`PACK_MIN_BYTES`) and, where the
CPU has it, bf16 ``nn.Linear`` weight once into oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, what inductor's CPU freezing does); afterwards
:func:`hwlm.model.transformer.linear` and ``Transformer.decode_step`` run those layers through
``torch.ops.mkldnn._linear_pointwise`` on the packed copy whenever no gradient is recorded. Training,
autocast, ``torch.compile`` and a weight changed since it was packed (an optimizer step,
``load_state_dict``, ``to()``) take the plain path: the packed copy is checked against the weight's
storage and version on every call.

Why (2-core AMD EPYC, 2 threads, every linear of a step in turn, docs/benchmarks.md "packed weights"):

* fp32: MKL's gemv reads a lone row's weights at 13-15 GB/s and its sgemm a few rows' at 5-9 GB/s;
  oneDNN on packed weights reads them at 27-32 GB/s at 1 row and 15-24 GB/s at 2-8 rows (``mid``'s
  120 MB of linears: 9.2 against 4.0 ms at 1 row, 14 against 5 ms at 8 rows; gpt2-124m's 494 MB at
  1 row: 33-35 against 15-16 ms).
* bf16: ``F.linear`` goes through oneDNN and reorders the whole weight on every call (for ``mid``'s
  50,304 x 384 output layer at 8 rows 4.5-6 ms of a 12 ms step, against 1.4-2.8 ms packed once).

The layout is tuned for :data:`PACK_ROWS` rows and any row count works. With it a row's outputs do
not depend on how many rows share the call (tested: the serving engine's greedy output must not depend
on the batch). The sums run in another order than MKL's, so packed outputs differ from the plain path's
by round-off (within 1e-6 relative); what calls the model for inference (``hwlm generate``, ``hwlm bench
infer``, ``hwlm serve``) packs, so their numbers agree with each other. The price is a second copy of
each packed weight (:func:`packed_bytes`); :func:`unpack_linears` frees it. Quantized and tensor-subclass
weights, and every device but the CPU, are left alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

__all__ = ["PACK_ROWS", "PACK_MIN_BYTES", "pack_linears", "unpack_linears", "packed_weight", "packed_bytes",
           "packable_dtypes"]

PACK_ROWS = 32  # the row count oneDNN's blocked layout is chosen for (fp32 at 1 row: 4.0 ms, hint 1: 4.4)
# fp32 weights smaller than this stay on MKL: a oneDNN call costs about 15 us more than a gemv, which reads a
# small weight from cache. Decode ms/token at thresholds 0 / 256 KiB / 1 MiB (none packed), 2 threads:
# tiny (vocab 4096) 0.84 / 0.73 / 0.47 (0.45), mid 5.56 / 5.12 / 5.30 (12.2), gpt2-124m 17.7 / 16.3 / 17.3 (33.7).
PACK_MIN_BYTES = 512 << 10


class _Packed(NamedTuple):
    weight: torch.Tensor  # oneDNN's opaque layout (torch._mkldnn), the same logical (out, in) shape
    ptr: int               # the plain weight's storage when packed ...
    version: int           # ... and its version counter (-1 for an inference tensor, which has none)
    nbytes: int

    # A copied or pickled model has other weight storage, so its packed copies would be stale (and an
    # opaque tensor has no storage to copy): they become None, the plain path, until packed again.
    def __deepcopy__(self, memo: dict) -> None:
        return None

    def __reduce__(self) -> tuple:
        return type(None), ()


def packable_dtypes() -> frozenset[torch.dtype]:
    """The weight data types this torch build packs on this CPU: fp32, and bf16 where oneDNN has it."""
    if not torch.backends.mkldnn.is_available():
        return frozenset()
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return frozenset({torch.float32, torch.bfloat16} if bf16 else {torch.float32})


def _version(w: torch.Tensor) -> int:
    return -1 if w.is_inference() else w._version


def pack_linears(model: nn.Module, min_fp32_bytes: int = PACK_MIN_BYTES) -> int:
    """Pack each plain CPU ``nn.Linear`` weight of ``model`` in a packable dtype; returns how many layers are packed.

    fp32 weights under ``min_fp32_bytes`` are left to MKL (see :data:`PACK_MIN_BYTES`); bf16 weights are
    packed at any size (``F.linear`` would reorder them on every call). Idempotent: a layer already packed
    on its current weight is kept. Call it again after changing the weights (a stale packed copy is never
    used, but it holds memory until repacked or unpacked).
    """
    dtypes = packable_dtypes()
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if not (type(module) is nn.Linear and type(w) is nn.Parameter and w.device.type == "cpu"
                    and w.dtype in dtypes and packed_weight(module) is None):
                continue
            nbytes = w.numel() * w.element_size()
            if w.dtype == torch.float32 and nbytes < min_fp32_bytes:
                continue
            p = torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS)
            module._hwlm_packed = _Packed(p, w.data_ptr(), _version(w), nbytes)
    return sum(packed_weight(m) is not None for m in model.modules())


def unpack_linears(model: nn.Module) -> None:
    """Drop every packed copy: the layers take the plain path again."""
    for module in model.modules():
        module.__dict__.pop("_hwlm_packed", None)


def packed_weight(layer: nn.Module) -> torch.Tensor | None:
    """``layer``'s packed weight if it has one that still matches its weight, else None."""
    p = layer.__dict__.get("_hwlm_packed")
    if p is None:  # never packed, unpacked, or a copy of a packed model
        return None
    w = layer.weight
    return p.weight if w.data_ptr() == p.ptr and _version(w) == p.version else None


def packed_bytes(model: nn.Module) -> int:
    """Bytes held by ``model``'s packed copies (the memory packing costs)."""
    return sum(p.nbytes for m in model.modules() if (p := m.__dict__.get("_hwlm_packed")) is not None)
