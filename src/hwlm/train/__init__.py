"""The training stage: ``train(TrainConfig, ModelConfig) -> TrainResult`` and loading what it wrote.

    >>> from hwlm.train import TrainConfig, train
    >>> result = train(TrainConfig(data="runs/data", out="runs/train", max_steps=100))  # doctest: +SKIP

Modules: ``config`` (torch-free ``TrainConfig``), ``optim`` (AdamW groups, warm-up + cosine),
``runtime`` (seeds, precision, autocast), ``loop`` (the loop), ``run`` (building a run: device, strategy,
key, resume, model, optimizer, loader), ``step`` (one step, validation loss, a checkpoint), ``checkpoint``
(atomic save, verify, restore), ``load`` (``load_model``), ``logs`` (JSONL + TensorBoard), ``progress``
(tqdm bar), ``parallel`` (process group, DDP/FSDP wrapping, agreeing across ranks), ``launch``
(``--nproc auto`` decision, torchrun launcher), ``sharded`` (FSDP checkpoints through DCP), ``faults``
(NaN/inf steps). ``TrainConfig`` imports without torch; the other names load torch on first use.
Several processes: docs/distributed.md.
"""

from __future__ import annotations

from typing import Any

from hwlm.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train", "LoadedModel", "load_model"]

_LAZY = {"TrainResult": "hwlm.train.loop", "train": "hwlm.train.loop",
         "LoadedModel": "hwlm.train.load", "load_model": "hwlm.train.load"}


def __getattr__(name: str) -> Any:
    # PEP 562 lazy import, as in hwlm.model: the CLI parser needs TrainConfig without torch.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hwlm.train' has no attribute {name!r}")
