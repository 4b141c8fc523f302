"""A short training loop shared by the masked fine-tune after pruning and by distillation.

Plain AdamW (no weight decay: a few hundred steps must not pull weights towards zero), a constant
learning rate after a 10% linear warm-up, gradient clipping at 1, batches from the run's training
split through ``hwlm.data.TokenLoader``. The caller gives the loss and an ``after_step`` hook (the
pruning masks are re-applied there, so pruned weights stay exactly zero).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from hwlm.data import TokenLoader

__all__ = ["train_steps"]


def train_steps(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data_dir: Path,
                steps: int, batch_size: int, lr: float, seed: int,
                after_step: Callable[[], None] | None = None, key: bytes | None = None) -> list[float]:
    """Run ``steps`` optimizer steps of ``loss_fn(x, y)`` on ``model``; return the losses (``key``: of an
    encrypted data folder, else $HWLM_DATA_KEY)."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    loader = TokenLoader(data_dir, "train", batch_size, model.cfg.block_size, seed=seed, key=key)
    warmup = max(1, steps // 10)
    losses = []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        x, y = loader.next_batch()
        loss = loss_fn(x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
