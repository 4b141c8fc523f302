"""Hardware recommendation: filter, rank, Pareto front."""

from __future__ import annotations

import pytest

from hwlm.errors import PlanError
from hwlm.plan import get_model, recommend


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
    ({}, r"give either --tokens \(training\), --rate \(serving a request rate\) or an inference workload"),
])
def test_bad_inputs(kwargs, message) -> None:
    with pytest.raises(PlanError, match=message):
        recommend("gpt2", **kwargs)


def test_critical_batch_formula() -> None:
    from hwlm.plan.recommend import critical_batch_tokens
    c = 6 * 7e9 * 2e12
    assert critical_batch_tokens(7e9, 2e12) == pytest.approx(0.292 * c ** 0.3271)
    assert critical_batch_tokens(70e9, 2e12) > critical_batch_tokens(7e9, 2e12)  # grows with model size


def test_data_parallel_width_is_capped_by_the_critical_batch() -> None:
    from hwlm.plan.recommend import critical_batch_tokens
    r = recommend("llama-3.1-8b", tokens=1e10, objective="time", top=200, hardware=["h100-sxm", "tpu-v5p"])
    cap = critical_batch_tokens(get_model("llama-3.1-8b").params.active, 1e10)
    for o in r.options:
        assert o.detail["global_batch_tokens"] <= cap * 1.01
        dp = int(o.layout.split("dp=")[1].split()[0])
        assert dp * get_model("llama-3.1-8b").seq_len <= o.detail["global_batch_tokens"]
    assert max(o.devices for o in r.options) > 207  # more devices than sequences: via tp/pp, not dp


def test_default_shows_the_best_of_each_family() -> None:
    r = recommend("llama-2-7b", tokens=2e11, objective="time", max_devices=16)
    fams = [o.detail["family"] for o in r.options]
    assert len(fams) == len(set(fams)) >= 3 and "nvidia gpu" in fams and "google tpu" in fams
    top = recommend("llama-2-7b", tokens=2e11, objective="time", max_devices=16, top=3)
    assert len(top.options) == 3 and top.options[0] == r.options[0]
    with pytest.raises(PlanError, match="--top must be a whole number >= 1"):
        recommend("llama-2-7b", tokens=2e11, top=0, max_devices=8)


def test_serving_a_rate_sizes_a_fleet_per_device() -> None:
    r = recommend("llama-3.1-8b", serving={"rate": 40.0, "prompt_len": 256, "gen_len": 128, "slo_ttft": 0.5},
                  hardware=["h100-sxm", "a100-80gb", "l4"], objective="cost", top=10)
    assert r.options and {o.hardware for o in r.options} <= {"h100-sxm", "a100-80gb", "l4"}
    for o in r.options:
        assert o.devices == o.detail["replicas"] * o.detail["tp"] and o.detail["ttft_p90_s"] <= 0.5
        assert o.detail["output_tokens_per_s"] == pytest.approx(40.0 * 128)
    costs = [o.cost_usd for o in r.options]
    assert costs == sorted(costs)
    with pytest.raises(PlanError, match="no hardware in the catalog serves 10 requests/s .*SLO below one request"):
        recommend("llama-3.1-8b", serving={"rate": 10.0, "slo_itl": 1e-5}, hardware=["h100-sxm"])
    with pytest.raises(PlanError, match="give either --tokens"):
        recommend("llama-3.1-8b", tokens=1e9, serving={"rate": 1.0})


def test_the_search_shortcuts_change_no_number() -> None:
    """The layout search's fast paths are exact: _relayout is dataclasses.replace, the cached activation
    bytes equal the uncached ones."""
    from dataclasses import replace

    from hwlm.plan import Layout, get_model
    from hwlm.plan.parallel import _activation_bytes, training_memory
    from hwlm.plan.training import _relayout
    lay = Layout(dp=4, tp=2, pp=2, zero_stage=1, recompute="partial", recompute_layers=3, micro_batch=2)
    assert _relayout(lay, micro_batch=4, recompute_layers=5) == replace(lay, micro_batch=4, recompute_layers=5)
    spec = get_model("llama-2-7b").spec
    mem = training_memory(spec, 7e9, lay, 4096, 80e9)
    assert mem.activations == _activation_bytes.__wrapped__(spec, 4096, 2, 2, 3, "bf16", "gpu", "korthikanti")


def test_no_network_figure_keeps_a_job_on_one_node() -> None:
    """A device whose catalog gives no link at all is planned on one node: the fallback PCIe link is not a
    network between hosts, so a 128-socket CPU fleet for an 8B model is refused, with the count that works."""
    from dataclasses import replace

    from hwlm.plan import estimate_training, get_device

    cpu = get_device("xeon-6980p")
    assert cpu.inter_node_bw is None and cpu.intra_node_bw is None
    with pytest.raises(PlanError, match=r"xeon-6980p has no network figure.*use at most 2 \(one node\)"):
        estimate_training("llama-3.1-8b", 1e10, cpu, 128)
    assert estimate_training("llama-3.1-8b", 1e10, cpu, 2).time_s > 0
    # Given a network figure, the same fleet is costed over it (the rule is about the data, not the kind).
    assert estimate_training("llama-3.1-8b", 1e10, replace(cpu, inter_node_bw=12.5e9), 128).time_s > 0
    r = recommend("llama-3.1-8b", tokens=1e10, kind="cpu")
    assert r.options and all(o.devices <= 2 for o in r.options)
    assert r.dropped.get("no network figure across nodes", 0) > 0
