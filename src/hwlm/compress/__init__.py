"""The compress stage: a trained run in, a smaller or faster run folder out, with its measured price.

    compress(CompressConfig(run=..., method="int8" | "int4" | "prune" | "distill", out=...)) -> CompressResult

| module | what |
|---|---|
| ``config.py`` | ``CompressConfig`` (torch-free), the methods and the precisions each writes |
| ``quant.py`` | int8 (``w8a8``, ``w8a16``) and int4 (``w4a16``) conversion; ``auto`` measures the int8 forms |
| ``prune.py`` | magnitude and 2:4 masks, masked fine-tune |
| ``distill.py`` | student from a preset, KL on the logits + LM loss |
| ``finetune.py`` | the short training loop prune and distill share |
| ``table.py`` | the trade-off table: quality, size, memory, tokens/s at several batches, TTFT, energy |
| ``run.py`` | ``compress``: builds, writes and reloads the new run folder atomically |

The quantized modules a compressed run loads into live in :mod:`hwlm.model.quantized` (loading is an
earlier stage than compressing). Names load lazily: ``import hwlm.compress.config`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from hwlm.compress.config import METHODS, CompressConfig

__all__ = ["CompressConfig", "CompressResult", "compress", "METHODS", "quantize_model", "prune_model",
           "distill_model", "render_table"]

_WHERE = {"CompressResult": "run", "compress": "run", "quantize_model": "quant", "prune_model": "prune",
          "distill_model": "distill", "render_table": "table"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"hwlm.compress.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'hwlm.compress' has no attribute {name!r}")
