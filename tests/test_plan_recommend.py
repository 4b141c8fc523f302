"""Hardware recommendation: filter, rank, Pareto front."""

from __future__ import annotations

import pytest

from hwlm.errors import PlanError
from hwlm.plan import recommend


def test_training_recommendation_ranks_and_filters() -> None:
    r = recommend("llama-2-7b", tokens=2e11, objective="cost", kind="gpu", max_devices=256)
    assert r.options and r.best is not None
    costs = [o.cost_usd for o in r.options if o.cost_usd is not None]
    assert costs == sorted(costs)
    assert r.pareto and all(o in r.options or o.time_s > 0 for o in r.pareto)
    fast = recommend("llama-2-7b", tokens=2e11, objective="time", kind="gpu", max_devices=256)
    assert fast.best.time_s <= r.best.time_s


def test_deadline_and_budget_drop_options() -> None:
    r = recommend("llama-2-7b", tokens=2e11, deadline_s=3600.0, kind="gpu", max_devices=64)
    assert not r.options and r.dropped.get("misses deadline", 0) > 0
    r = recommend("llama-2-7b", tokens=2e11, budget_usd=1.0, kind="gpu", max_devices=64)
    assert not r.options and r.dropped.get("over budget or no price", 0) > 0


def test_pareto_front_is_not_dominated() -> None:
    r = recommend("gpt2", tokens=1e10, kind="gpu", max_devices=16, top=1000)
    for p in r.pareto:
        for o in r.options:
            assert not (o.time_s < p.time_s and o.key("cost") < p.key("cost") and o.key("energy") < p.key("energy"))


def test_inference_recommendation() -> None:
    r = recommend("llama-3.1-8b", inference={"batch": 4, "prompt_len": 256, "gen_len": 128}, objective="cost")
    assert r.best is not None and r.best.detail["tpot_s"] > 0
    assert r.to_dict()["kind"] == "hwlm-plan-recommend"


@pytest.mark.parametrize("kwargs, message", [
    ({"tokens": 1e9, "objective": "speed"}, r"unknown objective 'speed'; choose one of time, cost, energy"),
    ({}, r"give either --tokens \(training\) or an inference workload"),
])
def test_bad_inputs(kwargs, message) -> None:
    with pytest.raises(PlanError, match=message):
        recommend("gpt2", **kwargs)
