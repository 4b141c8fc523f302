"""Mixture of experts in the planner: expert parallelism's memory and all-to-all, active FLOPs, MLA cache."""

from __future__ import annotations

import pytest

from hwlm.errors import PlanError
from hwlm.formulas import kv_cache_bytes_per_token, train_flops_per_token
from hwlm.plan import Layout, estimate_inference, estimate_training, get_device, get_model
from hwlm.plan.efficiency import kind_priors
from hwlm.plan.training import routed_expert_params


def _terms(e) -> dict[str, float]:
    return {t.name: t.value for t in e.terms}


def test_routed_expert_params_of_mixtral() -> None:
    m = get_model("mixtral-8x7b")
    s = m.spec
    per_expert = 3 * s.d_model * s.ff
    assert routed_expert_params(m) == pytest.approx(s.n_layers * s.n_experts * per_expert)
    assert routed_expert_params(get_model("llama-2-7b")) == 0


def test_expert_parallel_shards_only_the_experts() -> None:
    m = get_model("mixtral-8x7b")
    routed = routed_expert_params(m)
    dense = m.params.total - routed
    one = estimate_training(m, 1e10, "h100-sxm", 8, layout=Layout(dp=8, ep=1, zero_stage=0))
    eight = estimate_training(m, 1e10, "h100-sxm", 8, layout=Layout(dp=8, ep=8, zero_stage=0))
    assert one.memory.weights == pytest.approx(2.0 * m.params.total)
    assert eight.memory.weights == pytest.approx(2.0 * (dense + routed / 8))
    assert eight.memory.optimizer == pytest.approx(12.0 * (dense + routed / 8))
    assert eight.memory.activations == one.memory.activations


def test_all_to_all_cost_formula() -> None:
    m = get_model("mixtral-8x7b")
    e = estimate_training(m, 1e10, "h100-sxm", 8, layout=Layout(dp=8, ep=8, zero_stage=1))
    t = _terms(e)
    dev, eff = get_device("h100-sxm"), kind_priors("gpu").comm_eff
    s = m.spec
    vol = 1e10 / 8 * s.experts_per_token * s.d_model * 2.0 * 7 / 8
    assert t["ep_all_to_all_time"] == pytest.approx(s.n_layers * 4 * vol / (dev.intra_node_bw * eff))
    assert "ep_all_to_all_time" not in _terms(estimate_training(m, 1e10, "h100-sxm", 8, layout=Layout(dp=8)))


def test_flops_count_active_not_total_parameters() -> None:
    m = get_model("deepseek-v3")
    f = train_flops_per_token(m.spec, 4096)
    assert 6 * m.params.active * 0.9 < f < 6 * m.params.active * 1.5
    assert f < 6 * m.params.total / 10


def test_mla_cache_is_the_compressed_latent() -> None:
    m = get_model("deepseek-v3")
    s = m.spec
    assert kv_cache_bytes_per_token(s, 2.0) == s.n_layers * (512 + 64) * 2.0
    e = estimate_inference(m, "h200", 8, tp=8, precision="fp8", batch=1, prompt_len=1000, gen_len=24)
    # The latent is replicated on each tp rank (every head reads it); still ~70 KB per token, not ~MBs.
    assert _terms(e)["kv_bytes_per_token_device"] == pytest.approx(s.n_layers * 576 * 1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "llama-2-7b", "ep": 2}, r"ep=2 must divide .* \(a dense model"),
    ({"model": "mixtral-8x7b", "ep": 3}, r"ep=3 must divide dp=8 and the 8 routed experts"),
])
def test_bad_expert_parallel_degrees(kwargs, message) -> None:
    model = kwargs.pop("model")
    with pytest.raises(PlanError, match=message):
        estimate_training(model, 1e10, "h100-sxm", 8, **kwargs)
