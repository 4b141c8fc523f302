"""Hardware recommendation: filter, rank, Pareto front."""

from __future__ import annotations

import pytest

from hwlm.errors import PlanError
from hwlm.plan import get_device, get_model, recommend


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


def _fresh(ctx):
    """A copy of a search context with an empty memo (``replace`` does not copy it)."""
    from dataclasses import replace
    return replace(ctx)


def _exhaustive_choose(ctx, fixed):
    """The layout search with no bound and no memo: every candidate's memory counted, every fitting one timed
    with its terms recorded (the rules of training._choose: the first fitting ZeRO stage per key, partial
    recompute fitted per stage, a layout wins only when it is more than 3% faster)."""
    from dataclasses import replace

    from hwlm.plan import training as tr
    from hwlm.plan.explain import Terms
    best, seen = None, set()
    cands = tr._candidates(ctx, fixed)
    for lay in cands:
        key = (lay.tp, lay.pp, lay.virtual_stages, lay.recompute,
               lay.zero_stage if lay.recompute == "partial" else -1, lay.ep)
        if key in seen:
            continue
        if lay.recompute == "partial":
            lay = tr._fit_partial(ctx, lay)
            if lay is None or lay.recompute_fraction(ctx.model.spec.n_layers) == 0:
                continue
        if not tr._memory_of(ctx, lay).fits:
            continue
        seen.add(key)
        time = tr._timing(ctx, lay, Terms())["time"]
        if best is None or time < best[0] * 0.97:
            best = (time, lay)
    if best is not None:
        return best[1], True
    full = [replace(c, recompute="full") if c.recompute == "partial" else c for c in cands]
    return min(full, key=lambda c: tr._memory_of(ctx, c).total), False


@pytest.mark.parametrize("model, tokens, hw, n, extra", [
    ("llama-3.1-8b", 1e10, "h100-sxm", 128, {}),
    ("llama-3.1-8b", 1e10, "tpu-v6e", 256, {}),
    ("llama-3.1-8b", 1e10, "trn1", 128, {}),
    ("llama-2-70b", 2e12, "a100-80gb", 512, {}),
    ("llama-3.1-405b", 15e12, "h100-sxm", 2048, {"global_batch": 4096}),
    ("mixtral-8x7b", 1e12, "mi300x", 64, {}),
    ("qwen3-30b-a3b", 1e11, "gaudi3", 32, {}),
    ("deepseek-v3", 1e12, "h100-sxm", 1024, {"precision": "fp8"}),
    ("gpt2-124m", 1e10, "rtx-4090", 1, {}),
    ("llama-3.1-70b", 1e12, "h100-sxm", 4, {}),  # fits nowhere: the smallest layout
    ("llama-3.1-8b", 1e10, "h100-sxm", 64, {"recompute": "full", "schedule": "interleaved"}),
])
def test_the_pruned_layout_search_picks_what_the_exhaustive_one_does(model, tokens, hw, n, extra, monkeypatch) -> None:
    """training._choose skips layouts whose lower bound cannot beat the best and remembers memory, compute and
    communication per layout; the exhaustive search (no bound, no memo) must choose the very same layout."""
    from hwlm.plan import TrainingJob
    from hwlm.plan import training as tr
    from hwlm.plan.explain import Terms

    seen, choose = {}, tr._choose
    monkeypatch.setattr(tr, "_choose", lambda ctx, fixed: seen.setdefault("args", (ctx, fixed)) and choose(ctx, fixed))
    est = tr.estimate_training(TrainingJob(model=model, tokens=tokens, hardware=hw, devices=n, find_smallest=False,
                                           **extra))
    ctx, fixed = seen["args"]
    lay, fits = _exhaustive_choose(_fresh(ctx), fixed)
    assert choose(_fresh(ctx), fixed) == (lay, fits) and fits == est.fits
    for c in tr._candidates(ctx, fixed)[:300]:  # the bound never exceeds the time it bounds
        assert tr._time_lower_bound(_fresh(ctx), c) <= tr._timing(ctx, c, Terms())["time"]


def test_serving_a_moe_model_no_node_holds_spans_nodes_with_expert_parallelism() -> None:
    """DeepSeek-V3 in fp8 (671 GB) does not fit 8 x 80 GB: the H100 fleet is replicas of 2+ nodes with the
    experts spread over all their devices, the all-to-alls priced on the catalog's inter-node network."""
    from hwlm.plan import ServingJob, estimate_serving

    work = {"rate": 20.0, "prompt_len": 512, "gen_len": 256}
    r = recommend("deepseek-v3", serving=work, precision="fp8", hardware=["h100-sxm", "h200"], objective="cost",
                  top=10)
    h100 = [o for o in r.options if o.hardware == "h100-sxm"]
    assert h100, r.dropped
    o = h100[0]
    per_replica = o.detail["tp"] * o.detail["ep"]
    assert per_replica >= 16 and o.detail["nodes_per_replica"] >= 2 and o.devices == o.detail["replicas"] * per_replica
    assert "inter-node network 50 GB/s" in o.layout and f"ep={o.detail['ep']}" in o.layout
    # the same fleet as plan serve gives for that replica
    e = estimate_serving(ServingJob(model="deepseek-v3", hardware="h100-sxm", devices=per_replica,
                                    ep=o.detail["ep"], precision="fp8", **work))
    assert e.replicas == o.detail["replicas"]
    assert o.cost_usd == pytest.approx(o.devices * get_device("h100-sxm").price_per_hour)
    # the H200 node holds it: one node per replica, as before
    h200 = [o for o in r.options if o.hardware == "h200"]
    assert h200 and all("ep" not in o.detail and o.layout.endswith("(vllm)") for o in h200)


def test_serving_a_dense_model_stays_inside_a_node() -> None:
    """A dense model that fits one node gets the tensor-parallel fleets of before (the same as plan serve's);
    one that needs more than a node is dropped as not modelled, not as 'does not fit'."""
    from hwlm.plan import ServingJob, estimate_serving

    work = {"rate": 10.0, "prompt_len": 512, "gen_len": 256}
    r = recommend("llama-3.1-70b", serving=work, hardware=["h100-sxm", "a100-80gb"], objective="cost", top=10)
    assert {o.hardware for o in r.options} == {"h100-sxm", "a100-80gb"}
    for o in r.options:
        assert "ep" not in o.detail and o.layout == f"{o.detail['replicas']} x tp={o.detail['tp']} (vllm)"
        e = estimate_serving(ServingJob(model="llama-3.1-70b", hardware=o.hardware, devices=o.detail["tp"], **work))
        assert o.devices == e.replicas * o.detail["tp"]
    big = recommend("llama-3.1-405b", serving=work, hardware=["h100-sxm", "h200"], objective="cost")
    assert [o.hardware for o in big.options] == ["h200"]  # 8 x 141 GB holds 811 GB of bf16 weights
    assert big.dropped["needs more than one node: not modelled (dense models: tensor parallel inside a node)"] == 1
