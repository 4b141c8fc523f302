"""Pruning: magnitude (unstructured) and 2:4 semi-structured masks, then a masked fine-tune.

* Unstructured (``--sparsity S``): in each block Linear the fraction S of weights with the smallest
  magnitude become zero (per layer, so no layer is emptied; Han et al. 2015).
* 2:4 (``--pattern 2:4``): in every group of 4 consecutive input weights of a row the 2 smallest are
  zeroed, the pattern NVIDIA's sparse tensor cores run at twice the speed (Mishra et al. 2021);
  ``hwlm.model.quantized.after_load`` hands such weights to ``torch.sparse.to_sparse_semi_structured``
  on CUDA. On a CPU neither pattern is faster (sparse CSR matmul measured 0.37x of dense): pruning
  here buys compressibility and a GPU path, not CPU speed, and the table says so.

The embedding and output layer are left dense (tied, and the output layer's rows are the vocabulary).
The fine-tune re-applies the masks after every optimizer step, so pruned weights stay exactly zero.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hwlm.compress.finetune import train_steps
from hwlm.errors import ConfigError
from hwlm.model.quantized import linear_targets

__all__ = ["magnitude_mask", "two_four_mask", "prune_model", "sparsity_of"]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the ``1 - sparsity`` largest-magnitude entries of ``weight``."""
    n_zero = int(round(sparsity * weight.numel()))
    if n_zero == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    threshold = weight.abs().flatten().kthvalue(n_zero).values
    mask = weight.abs() > threshold
    # Ties at the threshold: keep exactly numel - n_zero entries.
    short = (weight.numel() - n_zero) - int(mask.sum())
    if short > 0:
        ties = ((weight.abs() == threshold) & ~mask).flatten().nonzero().flatten()[:short]
        mask.view(-1)[ties] = True
    return mask


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping the 2 largest-magnitude of every 4 consecutive weights along each row."""
    out_f, in_f = weight.shape
    if in_f % 4:
        raise ConfigError(f"2:4 pruning needs layer widths divisible by 4, got {in_f}: use --pattern unstructured")
    groups = weight.abs().view(out_f, in_f // 4, 4)
    keep = groups.topk(2, dim=-1).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True).view(out_f, in_f)


def sparsity_of(model: nn.Module) -> float:
    """Fraction of zeros over the block Linears' weights."""
    weights = [getattr(p, n).weight for p, n in linear_targets(model, False)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def prune_model(model: nn.Module, sparsity: float, pattern: str, data_dir: Path, finetune_steps: int,
                batch_size: int, lr: float, seed: int, key: bytes | None = None) -> dict:
    """Prune ``model`` in place and fine-tune it with the masks held; returns what was done.
    ``key`` opens an encrypted data folder (else $HWLM_DATA_KEY)."""
    layers = [getattr(p, n) for p, n in linear_targets(model, False)]
    with torch.no_grad():
        masks = [two_four_mask(l.weight) if pattern == "2:4" else magnitude_mask(l.weight, sparsity)
                 for l in layers]
        for layer, mask in zip(layers, masks):
            layer.weight.mul_(mask)

    def reapply() -> None:
        with torch.no_grad():
            for layer, mask in zip(layers, masks):
                layer.weight.mul_(mask)

    def lm_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x, y, return_logits=False)[1]

    losses = []
    if finetune_steps > 0:
        losses = train_steps(model, lm_loss, data_dir, finetune_steps, batch_size, lr, seed, after_step=reapply,
                             key=key)
    return {"pattern": pattern, "sparsity": sparsity_of(model), "finetune_steps": finetune_steps,
            "finetune_lr": lr, "finetune_loss_first_last": [losses[0], losses[-1]] if losses else None}

