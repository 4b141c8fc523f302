"""AdamW with decoupled weight decay on matrices only, and the warm-up + cosine schedule.

Weight decay goes on the weights of ``nn.Linear`` layers and nothing else: norms and
biases are not decayed (decay would pull a norm's gain towards 0, which nothing in
the loss asks for), and neither are embedding tables, including a tied output head
(their rows for rare tokens see few gradients, so decay would shrink them towards 0
between updates; OLMo 2 drops embedding decay for the same reason).

The fused AdamW kernel is used on CUDA and on the CPU: on the 2-core CPU this was
written on (torch 2.13, AVX-512) it took 0.5 ms against 1.4 ms for ``foreach`` on a
0.4M-parameter model and 2.0 ms against 12.5 ms on a 4.2M one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hwlm.train.config import TrainConfig

__all__ = ["build_optimizer", "lr_at", "param_groups"]

FUSED_DEVICE_TYPES = ("cpu", "cuda")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: Linear weights (decayed) and everything else (not decayed)."""
    decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay_ids -= embed_ids  # a tied head shares the embedding's tensor: treat it as an embedding
    decay, no_decay = [], []
    for p in model.parameters():  # .parameters() yields a tied tensor once
        if p.requires_grad:
            (decay if id(p) in decay_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> tuple[torch.optim.AdamW, str]:
    """AdamW over :func:`param_groups`; returns it and which implementation was chosen, in words."""
    groups = param_groups(model, cfg.weight_decay)
    kind = "fused" if device_type in FUSED_DEVICE_TYPES else "foreach"
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **{kind: True})
    n_decay = sum(p.numel() for p in groups[0]["params"])
    n_other = sum(p.numel() for p in groups[1]["params"])
    return opt, f"AdamW ({kind}); weight decay {cfg.weight_decay} on {n_decay:,} Linear weights, none on {n_other:,} others"


def lr_at(step: int, cfg: TrainConfig, progress: float, total_steps: int | None = None) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warm-up over ``cfg.warmup`` steps to ``cfg.lr``, then a cosine decay to ``cfg.min_lr``.
    ``progress`` in [0, 1] is how far the run is towards its horizon (steps, tokens or time,
    whichever ends first); the cosine covers the part of it after warm-up, whose share is
    ``warmup / total_steps`` when the horizon is known in steps.

    >>> cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup=2, max_steps=10)
    >>> [round(lr_at(s, cfg, s / 10, 10), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    warm_frac = min(cfg.warmup / total_steps, 1.0) if total_steps else 0.0
    t = min(max((progress - warm_frac) / max(1.0 - warm_frac, 1e-12), 0.0), 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * t)) * (cfg.lr - cfg.min_lr)

