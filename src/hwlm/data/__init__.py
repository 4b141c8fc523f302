"""The data stage: raw text -> byte-level BPE tokenizer + token shards + manifest, and loaders.

``prepare`` lives in ``pipeline.py`` (a module named ``prepare`` would shadow the function of that
name on this package). Names are imported lazily so that ``import hwlm.data.config`` (the CLI parser) stays light:
numpy and tokenizers load on first use, torch only when a batch is made.
"""

from __future__ import annotations

import importlib
from typing import Any

# Light and eager: these bind the *functions* before any submodule import could set the package
# attributes `normalize` (module hwlm.data.normalize) or `config` in their place.
from hwlm.data.config import PrepareConfig
from hwlm.data.normalize import normalize

__all__ = [
    "PrepareConfig",
    "PrepareResult",
    "prepare",
    "normalize",
    "read_documents",
    "Utf8Stats",
    "train_tokenizer",
    "load_tokenizer",
    "encode_documents",
    "load_manifest",
    "dtype_for_vocab",
    "TokenLoader",
    "eval_batches",
]

_WHERE = {
    "PrepareResult": "pipeline",
    "prepare": "pipeline",
    "read_documents": "readers",
    "Utf8Stats": "readers",
    "train_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "encode_documents": "tokenizer",
    "load_manifest": "shards",
    "dtype_for_vocab": "shards",
    "TokenLoader": "loader",
    "eval_batches": "loader",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"hwlm.data.{_WHERE[name]}"), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'hwlm.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
