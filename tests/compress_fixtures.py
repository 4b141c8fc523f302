"""Helpers for the compress tests: a small trained model wide enough for int4 groups, and logits of it.

``small_run`` (session fixture in conftest.py) is the debug preset at width 64 (int4 groups of 32 fit)
trained for 60 steps on ``tiny_data``: enough that perplexity is well below the vocabulary size, so
quality bounds after compression can fail.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny import tiny_cfg

# Table settings that keep a compress call to a second or two on the debug model.
TABLE = dict(batches=[1, 2], decode_steps=2, eval_batches=2)


def build_small_run(tiny_data: Path, out: Path, steps: int = 60) -> Path:
    from hwlm.model import ModelConfig
    from hwlm.train import train

    model_cfg = ModelConfig.from_name("debug", n_embd=64, vocab_size=304)
    train(tiny_cfg(tiny_data, out, max_steps=steps, batch_size=8, eval_interval=0, ckpt_interval=0,
                   warmup=5), model_cfg)
    return out


@torch.no_grad()
def logits_of(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    """Logits (2 * T, V) of the model on two fixed random windows."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 300, (2, model.cfg.block_size), generator=gen)
    return model(x)[0].flatten(0, 1)
