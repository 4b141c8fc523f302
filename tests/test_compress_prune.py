"""hwlm compress --method prune: masks, the masked fine-tune, quality bounds and the run round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hwlm.compress import CompressConfig, compress
from hwlm.compress.prune import magnitude_mask, sparsity_of, two_four_mask
from hwlm.train.load import load_model

from compress_fixtures import TABLE


def test_magnitude_mask_keeps_the_largest_exactly() -> None:
    w = torch.tensor([[0.1, -3.0, 0.2, 4.0], [0.5, 0.5, -0.5, 0.05]])
    mask = magnitude_mask(w, 0.5)
    assert int(mask.sum()) == 4
    assert mask[0].tolist() == [False, True, False, True]
    assert not mask[1, 3] and (w.abs()[mask].min() >= w.abs()[~mask].max())


def test_two_four_mask_keeps_two_of_every_four() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    mask = two_four_mask(w)
    assert (mask.view(8, 4, 4).sum(-1) == 2).all()
    kept = (w.abs() * mask).view(8, 4, 4)
    dropped = (w.abs() * ~mask).view(8, 4, 4)
    assert (kept.max(-1).values >= dropped.max(-1).values).all()


def _zeros_per_group(model: torch.nn.Module) -> torch.Tensor:
    w = model.h[0].mlp.c_fc.weight
    return (w == 0).view(w.size(0), -1, 4).sum(-1)


@pytest.mark.slow
@pytest.mark.parametrize("pattern, bound", [("unstructured", 2.0), ("2:4", 3.0)])
def test_prune_within_bound_after_masked_finetune(small_run: Path, tmp_path: Path, pattern: str,
                                                  bound: float) -> None:
    out = tmp_path / "p"
    result = compress(CompressConfig(run=small_run, method="prune", pattern=pattern, sparsity=0.5, out=out,
                                     **{**TABLE, "eval_batches": 8}))
    done = result.record["prune"]
    source_steps = result.record["source_steps"]
    assert 0 < done["finetune_steps"] <= 0.1 * source_steps  # at most 10% of the original steps
    row = result.rows[1]
    assert row["ppl_delta_pct"] < bound, result.table
    loaded = load_model(out)  # the masks survived the fine-tune and the save
    assert abs(sparsity_of(loaded.model) - 0.5) < 1e-3
    assert loaded.run_config["compression"]["pattern"] == pattern
    if pattern == "2:4":
        assert (_zeros_per_group(loaded.model) >= 2).all()
    original = load_model(small_run).model
    assert not torch.equal(original.h[0].mlp.c_fc.weight, loaded.model.h[0].mlp.c_fc.weight)


@pytest.mark.slow
def test_finetune_recovers_what_two_four_costs(small_run: Path, tmp_path: Path) -> None:
    kw = dict(run=small_run, method="prune", pattern="2:4", table=True, **{**TABLE, "eval_batches": 8})
    before = compress(CompressConfig(out=tmp_path / "a", finetune_fraction=0.0, **kw)).rows[1]["ppl"]
    after = compress(CompressConfig(out=tmp_path / "b", **kw)).rows[1]["ppl"]
    assert after < before
