"""Activation recompute (hwlm.model.recompute): the same losses and gradients as no recompute, fewer
bytes kept for backward (selective < none, full < selective), and `train --recompute` end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hwlm.model import ModelConfig, Transformer
from hwlm.train import checkpoint as ckpt_io
from hwlm.train import train
from tiny import tiny_cfg


def _loss_and_grads(cfg: ModelConfig, mode: str, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.recompute = mode
    x = torch.randint(0, cfg.vocab_size, (3, cfg.block_size), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(seed)  # dropout draws: checkpoint must replay them in the recomputed forward
    _, loss = model(x, x)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("preset, dropout", [("debug", 0.0), ("debug", 0.1), ("llama-debug", 0.1)])
@pytest.mark.parametrize("mode", ["selective", "full"])
def test_recompute_gives_the_same_loss_and_gradients(preset: str, dropout: float, mode: str) -> None:
    cfg = ModelConfig.from_name(preset, dropout=dropout)
    loss0, grads0 = _loss_and_grads(cfg, "none")
    loss1, grads1 = _loss_and_grads(cfg, mode)
    assert torch.equal(loss0, loss1)
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, rtol=0, atol=0, msg=name)


def _saved_bytes(cfg: ModelConfig, mode: str, batch: int = 4) -> int:
    """Bytes of the distinct storages autograd keeps for backward (checkpointed regions keep none)."""
    model = Transformer(cfg)
    model.recompute = mode
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, x)
    loss.backward()
    return sum(n for ptr, n in seen.items() if ptr not in params)


def test_recompute_keeps_fewer_bytes_for_backward() -> None:
    # Moderate: 4 layers, width 128, context 256 (the attention probabilities matter at this length).
    cfg = ModelConfig.from_name("tiny", block_size=256, vocab_size=512)
    none, selective, full = (_saved_bytes(cfg, m) for m in ("none", "selective", "full"))
    assert selective < 0.8 * none
    assert full < 0.5 * selective
    assert full < 0.25 * none


def test_train_with_full_recompute_matches_the_plain_run(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    result = train(tiny_cfg(tiny_data, tmp_path / "run", recompute="full"))
    ours = load_file(str(result.last_checkpoint / "model.safetensors"))
    plain = load_file(str(ckpt_io.latest_checkpoint(tiny_run) / "model.safetensors"))
    assert ours.keys() == plain.keys()
    for name, t in plain.items():
        assert ours[name].equal(t), name
