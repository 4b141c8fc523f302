"""Compute-optimal sizing (Chinchilla approach 3 and the Epoch AI refit)."""

from __future__ import annotations

import pytest

from hwlm.errors import PlanError
from hwlm.plan import LAWS, compute_optimal


def test_optimum_satisfies_budget_and_minimises_loss() -> None:
    r = compute_optimal(1e23)
    assert 6 * r.params * r.tokens == pytest.approx(1e23)
    law = LAWS["chinchilla"]
    for f in (0.8, 1.25):  # moving along C = 6ND raises the loss
        assert law.loss(r.params * f, r.tokens / f) > r.loss
    assert "Hoffmann" in r.source and (law.E, law.A, law.B, law.alpha, law.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)


def test_epoch_refit_is_near_20_tokens_per_param() -> None:
    r = compute_optimal(5.76e23, law="epoch")
    assert 15 < r.tokens_per_param < 25 and "Besiroglu" in r.source


def test_hardware_and_usd_budgets() -> None:
    hw = compute_optimal(hardware="h100-sxm", devices=8, hours=24)
    assert hw.budget_flops < 8 * 989.4e12 * 24 * 3600 and "h100-sxm" in hw.assumptions
    usd = compute_optimal(hardware="h100-sxm", usd=1000)
    assert usd.budget_flops > 0


@pytest.mark.parametrize("kwargs, message", [
    ({}, r"give a FLOP budget"),
    ({"budget_flops": -1}, r"the FLOP budget must be positive"),
    ({"budget_flops": 1e20, "law": "kaplan"}, r"unknown scaling law 'kaplan'"),
    ({"hardware": "h100-sxm"}, r"with --hardware give --hours or --usd"),
])
def test_bad_inputs(kwargs, message) -> None:
    with pytest.raises(PlanError, match=message):
        compute_optimal(**kwargs)
