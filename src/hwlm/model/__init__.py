"""The model stage: configuration, the Transformer, its KV cache and generation.

    >>> from hwlm.model import ModelConfig, Transformer, generate
    >>> model = Transformer(ModelConfig.from_name("debug", vocab_size=512))
    >>> ids = list(generate(model, [0], max_new_tokens=4, temperature=0))

``ModelConfig`` is torch-free (``hwlm.model.config``); the other names import torch on
first use, so that ``from hwlm.model import ModelConfig`` stays cheap for the CLI and planner.
Generation lives in ``generation.py``, not ``generate.py``: a submodule named like the
function would replace ``hwlm.model.generate`` with the module once imported. ``pack_linears(model)``
(``packing.py``) packs a CPU model's linear weights once for oneDNN, as ``hwlm generate`` does before decoding.
"""

from __future__ import annotations

from typing import Any

from hwlm.model.config import ModelConfig

__all__ = ["ModelConfig", "Transformer", "KVCache", "generate", "pack_linears"]

_LAZY = {"Transformer": "hwlm.model.transformer", "KVCache": "hwlm.model.transformer",
         "generate": "hwlm.model.generation", "pack_linears": "hwlm.model.packing"}


def __getattr__(name: str) -> Any:
    # PEP 562 lazy import: torch loads only when a torch-using name is asked for.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hwlm.model' has no attribute {name!r}")
