"""Optimizers for classifiers with sparse-gradient tables (the bag of words, wide & deep's wide part).

:func:`build_sparse_optimizer` gives AdamW (:func:`hwlm.train.optim.build_optimizer`) for a model without such
tables and a :class:`SparseDenseAdam` for one with them.
"""

from __future__ import annotations

from typing import Any

import torch

from hwlm.train.config import TrainConfig
from hwlm.train.optim import build_optimizer

__all__ = ["SparseDenseAdam", "build_sparse_optimizer"]


class SparseDenseAdam:
    """``torch.optim.SparseAdam`` for sparse-gradient tables and AdamW for the rest, driven as one optimizer.

    The bag of words' table has sparse gradients (only the rows a batch holds), which AdamW cannot take;
    fastText likewise updates only those rows. ``param_groups`` lists both optimizers' groups, so the
    schedule sets their learning rate as it does AdamW's (times a group's ``lr_scale``: wide & deep's
    ``--wide-lr`` over ``--lr``); the state dict holds both."""

    def __init__(self, sparse: list[torch.nn.Parameter], dense: torch.optim.Optimizer, lr: float,
                 betas: tuple[float, float], lr_scale: float = 1.0) -> None:
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr * lr_scale, betas=betas)
        self.sparse.param_groups[0]["lr_scale"] = lr_scale
        self.dense = dense

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        # Read each time: load_state_dict replaces an optimizer's group dicts.
        return self.sparse.param_groups + self.dense.param_groups

    def step(self) -> None:
        self.sparse.step()
        self.dense.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sparse.zero_grad(set_to_none=set_to_none)
        self.dense.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"sparse": self.sparse.state_dict(), "dense": self.dense.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sparse.load_state_dict(state["sparse"])
        self.dense.load_state_dict(state["dense"])


def build_sparse_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str,
                           sparse_lr: float = 0.0) -> tuple[Any, str]:
    """AdamW (``hwlm.train.optim``); a model with sparse-gradient tables also gets SparseAdam for them (at peak
    ``sparse_lr``, 0: ``cfg.lr``)."""
    tables = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
              and m.sparse and m.weight.requires_grad]
    if not tables:
        return build_optimizer(model, cfg, device_type)
    ids = {id(p) for p in tables}
    for p in tables:  # hidden from AdamW's groups while they are built
        p.requires_grad_(False)
    dense, text = build_optimizer(model, cfg, device_type)
    for p in tables:
        p.requires_grad_(True)
    assert not any(id(p) in ids for g in dense.param_groups for p in g["params"])
    rows = sum(p.numel() for p in tables)
    scale = sparse_lr / cfg.lr if sparse_lr and cfg.lr else 1.0
    return (SparseDenseAdam(tables, dense, cfg.lr, tuple(cfg.betas), scale),
            f"SparseAdam on {rows:,} sparse embedding parameters (only a batch's rows, peak lr {cfg.lr * scale:g}), "
            f"{text}")
