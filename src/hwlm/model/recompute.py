"""Activation recompute (``hwlm train --recompute none|selective|full``): trade FLOPs for memory.

Autograd keeps every tensor a block's backward needs from the forward until that backward runs, so
activation memory grows with layers x batch x context. ``torch.utils.checkpoint`` (non-reentrant)
keeps only a region's inputs and runs its forward again during backward:

- ``full``: each whole block is a region. Saved per block: its input (the residual stream, C per
  token). Cost: one more forward of every block (about +33% of the step's FLOPs).
- ``selective``: the attention sublayer of each block (``ln_1`` then attention: the q/k/v
  projection, scaled-dot-product attention, the output projection) is the region; the MLP keeps
  its activations. Attention is the part to recompute because it holds what grows with the
  context: on the math SDPA path (the CPU with a mask or dropout, older GPUs) the (H, T) attention
  probabilities per token, plus q/k/v and their copies; the MLP's saved set (about 2-4 F per
  token) does not grow with T. Attention's projections are 4 C^2 of the block's 12 C^2 matmul
  FLOPs per token (GPT-2 widths), so recomputing it costs about a third of what ``full`` costs.
  This is the spirit of Korthikanti et al. 2022 (arXiv:2205.05198), who recompute only the
  attention core; hwlm draws the region at the sublayer so that the model's code stays one path.

Losses and gradients are unchanged (the same ops run on the same inputs; dropout replays its RNG
state), which tests/test_recompute.py checks. Only the training forward recomputes: evaluation and
decoding (no gradient, or a KV cache) run the blocks as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from hwlm.model.transformer import Block

__all__ = ["RECOMPUTE_MODES", "run_block"]

RECOMPUTE_MODES = ("none", "selective", "full")


def _attention(block: "Block", x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
               start_pos: int) -> torch.Tensor:
    return block.attn(block.ln_1(x), rope, None, block.layer, start_pos)


def run_block(block: "Block", x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, start_pos: int,
              mode: str) -> torch.Tensor:
    """``block(x, rope, None, start_pos)`` with the activations of ``mode`` recomputed in backward."""
    if mode == "full":
        return checkpoint(block, x, rope, None, start_pos, use_reentrant=False)
    if mode == "selective":
        # The two residual lines of Block.forward, with the attention sublayer as the region.
        x = x + checkpoint(_attention, block, x, rope, start_pos, use_reentrant=False)
        return x + block.mlp(block.ln_2(x))
    raise ValueError(f"recompute mode {mode!r} is not one of {RECOMPUTE_MODES}")
