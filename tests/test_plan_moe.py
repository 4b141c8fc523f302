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


def test_expert_parallel_serving_splits_experts_and_batch() -> None:
    """ep=8 groups of tp=1 on 8 devices: each device holds the dense part whole and 1/8 of the routed experts,
    the KV cache of 1/8 of the sequences, and pays 2 all-to-alls per MoE layer."""
    from hwlm.formulas import WEIGHT_BYTES
    from hwlm.plan import estimate_inference, get_device
    from hwlm.plan.collectives import all_to_all_time
    from hwlm.plan.experts import moe_parts, weights_per_device
    from hwlm.plan.efficiency import priors_for
    m = get_model("mixtral-8x7b")
    dense, per_expert, n_moe = moe_parts(m)
    assert dense + n_moe * m.spec.n_experts * per_expert == pytest.approx(m.params.total)
    kw = dict(batch=64, prompt_len=512, gen_len=128, engine="vllm")
    tp8 = estimate_inference("mixtral-8x7b", "h100-sxm", 8, **kw)
    ep8 = estimate_inference("mixtral-8x7b", "h100-sxm", 8, ep=8, **kw)
    assert (ep8.tp, ep8.ep) == (1, 8)
    b = WEIGHT_BYTES["bf16"]
    assert ep8.weights_bytes_per_device == pytest.approx((dense + n_moe * 8 * per_expert / 8) * b)
    assert ep8.weights_bytes_per_device == pytest.approx(weights_per_device(m, b, 1, 8))
    assert tp8.weights_bytes_per_device == pytest.approx(m.params.total * b / 8)
    terms = {t.name: t.value for t in ep8.terms}
    # the KV cache of 64 / 8 sequences, whole heads (tp=1)
    assert ep8.kv_cache_bytes_per_device == pytest.approx(8 * (512 + 128) * terms["kv_bytes_per_token_device"])
    dev = get_device("h100-sxm")
    one, _ = all_to_all_time(dev, 8, 8 * m.spec.experts_per_token * m.spec.d_model * 2.0,
                             priors_for("gpu", "bf16").comm_eff)
    assert terms["decode_ep_all_to_all_time"] == pytest.approx(2 * n_moe * one)
    assert "decode_tp_comm_time" not in terms and "decode_tp_comm_time" in {t.name for t in tp8.terms}


def test_expert_parallel_bad_input_is_one_line() -> None:
    from hwlm.plan import ServingJob, estimate_inference, estimate_serving
    with pytest.raises(PlanError, match="dense model; expert parallelism needs a mixture-of-experts model"):
        estimate_inference("llama-2-7b", "h100-sxm", 8, ep=8)
    with pytest.raises(PlanError, match="does not divide the 8 routed experts"):
        estimate_inference("mixtral-8x7b", "h100-sxm", 6, ep=3, tp=2)
    with pytest.raises(PlanError, match="does not divide --devices 8"):
        estimate_inference("mixtral-8x7b", "h100-sxm", 8, ep=4, tp=4)
    with pytest.raises(PlanError, match="dense model"):
        estimate_serving(ServingJob(model="llama-2-7b", hardware="h100-sxm", devices=8, ep=8, concurrency=4))


def test_expert_parallel_serving_holds_a_kv_cache_per_attention_group() -> None:
    """MLA's latent is replicated on every tp rank; with data-parallel attention each of the ep groups keeps its
    own sequences, so the replica's KV capacity grows by about ep (less the replicated dense weights)."""
    from hwlm.plan import ServingJob, estimate_serving
    kw = dict(model="deepseek-v3", hardware="h200", devices=8, concurrency=16, prompt_len=1024, gen_len=128,
              precision="fp8")
    tp = estimate_serving(ServingJob(**kw))
    ep = estimate_serving(ServingJob(ep=8, **kw))
    assert ep.ep == 8 and ep.kv_capacity_tokens > 4 * tp.kv_capacity_tokens


def test_capacity_factor_pads_the_routed_experts_flops() -> None:
    """A token-dropping MoE computes capacity_factor x its share in every expert: the padding adds
    (cf - 1) x the routed experts' training FLOPs to the matrix time, and nothing to the model FLOPs (MFU)."""
    from hwlm.plan.experts import moe_parts
    kw = dict(tokens=1e9, hardware="h100-sxm", devices=64, seq_len=4096, tp=1, pp=1, ep=8, find_smallest=False)
    a = estimate_training("mixtral-8x7b", **kw)
    b = estimate_training("mixtral-8x7b", capacity_factor=1.25, **kw)
    m = get_model("mixtral-8x7b")
    _, per_expert, n_moe = moe_parts(m)
    pad = {t.name: t.value for t in b.terms}["capacity_padding_flops"]
    assert pad == pytest.approx(1e9 * 6 * n_moe * m.spec.experts_per_token * per_expert * 0.25)
    ta, tb = ({t.name: t.value for t in e.terms}["matmul_time"] for e in (a, b))
    assert tb / ta == pytest.approx((a.flops + pad) / a.flops)
    assert a.flops == b.flops
    with pytest.raises(PlanError, match="capacity-factor must be a number >= 1"):
        estimate_training("mixtral-8x7b", capacity_factor=0.5, **kw)


def _decode_a2a(devices: int, ep: int) -> tuple[float, str]:
    from hwlm.plan import estimate_inference
    e = estimate_inference("deepseek-v3", "h100-sxm", devices, ep=ep, precision="fp8", batch=64, prompt_len=512,
                           gen_len=64)
    t = next(t for t in e.terms if t.name == "decode_ep_all_to_all_time")
    return t.value, t.formula


def _a2a_case():
    from hwlm.plan.collectives import LIBRARIES
    from hwlm.plan.efficiency import priors_for
    from hwlm.plan.experts import moe_parts
    m, dev = get_model("deepseek-v3"), get_device("h100-sxm")
    return m, dev, moe_parts(m)[2], LIBRARIES["nccl"], priors_for("gpu", "fp8").comm_eff


def test_ep_groups_on_two_nodes_exchange_over_the_network() -> None:
    """16 H100s (8 a node) as ep=2 groups of tp=8: a device's one ep peer is the same tp rank of the other
    group, 8 devices away on the other node, so half its bytes cross the 50 GB/s NIC, not NVLink. Each of
    a group's 8 tp ranks sends 1/8 of the group's tokens (vLLM's sequence-parallel MoE), not all of them."""
    m, dev, n_moe, nccl, eff = _a2a_case()
    nbytes = 32 / 8 * m.spec.experts_per_token * m.spec.d_model * 2.0  # 64 sequences / ep 2 per group / tp 8
    one = nccl.base_s + nccl.hop_net_s + 0.5 * nbytes / (dev.inter_node_bw * eff)
    value, formula = _decode_a2a(16, 2)
    assert value == pytest.approx(2 * n_moe * one)
    assert "(2-1)/2" in formula and "leaving the 8-device scale-up domain" in formula and "inter-node network" in formula
    assert "32 tok / tp 8" in formula


def test_tp_ranks_of_an_ep_group_each_send_their_share_of_its_tokens() -> None:
    """The exchange's bytes per device fall as 1/tp for the same group's tokens (SP_MOE_SOURCE): a tp=1
    group of the same tokens sends tp times the bytes of each rank of a tp group."""
    from hwlm.plan.collectives import all_to_all_time
    from hwlm.plan.experts import SP_MOE_SOURCE, ep_comm
    m, dev, n_moe, _, eff = _a2a_case()
    assert "use_sequence_parallel_moe" in SP_MOE_SOURCE
    for tp in (1, 2, 4, 8):
        got = ep_comm(m, dev, tp, 2, 64.0, eff)[0]
        one = all_to_all_time(dev, 2, 64.0 / tp * m.spec.experts_per_token * m.spec.d_model * 2.0, eff, stride=tp)[0]
        assert got == pytest.approx(2 * n_moe * one)


def test_ep_inside_one_node_stays_on_nvlink() -> None:
    m, dev, n_moe, nccl, eff = _a2a_case()
    nbytes = 8 * m.spec.experts_per_token * m.spec.d_model * 2.0
    one = nccl.base_s + 7 * nccl.hop_fabric_s + 7 / 8 * nbytes / (dev.intra_node_bw * eff)
    value, formula = _decode_a2a(8, 8)
    assert value == pytest.approx(2 * n_moe * one)
    assert "inter-node" not in formula


def test_ep_over_two_nodes_sends_the_off_node_share_over_the_network() -> None:
    """tp=1, ep=16 over two 8-GPU nodes (plan recommend's multi-node fleets): 7 of the 15 peers share the node
    and take 7/16 of the bytes over NVLink while the other 8/16 leave it over the NIC, both at once."""
    m, dev, n_moe, nccl, eff = _a2a_case()
    nbytes = 4 * m.spec.experts_per_token * m.spec.d_model * 2.0
    one = nccl.base_s + 7 * nccl.hop_fabric_s + 8 * nccl.hop_net_s + max(
        7 / 16 * nbytes / (dev.intra_node_bw * eff), 8 / 16 * nbytes / (dev.inter_node_bw * eff))
    value, formula = _decode_a2a(16, 16)
    assert value == pytest.approx(2 * n_moe * one)
    assert "(16-8)/16" in formula


def test_ranks_per_domain_follows_the_stride() -> None:
    from hwlm.plan.collectives import ranks_per_domain
    h100, v5e = get_device("h100-sxm"), get_device("tpu-v5e")
    assert [ranks_per_domain(h100, 8, s) for s in (1, 2, 4, 8, 16)] == [8, 4, 2, 1, 1]
    assert ranks_per_domain(h100, 64) == 8
    assert ranks_per_domain(v5e, 64, 4) == 64  # a 256-chip pod is one ICI domain across its 8-chip hosts


def test_training_ep_peers_lie_tp_x_pp_devices_apart() -> None:
    """plan train's ep ranks are data-parallel ranks, tp x pp devices apart: tp=1 pp=4 ep=8 on 8-GPU nodes has 2
    of the 8 ep ranks on a node, so 6/8 of each all-to-all leaves it over the NIC (1/8 over NVLink at once)."""
    m, dev, eff = get_model("mixtral-8x7b"), get_device("h100-sxm"), kind_priors("gpu").comm_eff
    s = m.spec
    lay = Layout(dp=16, tp=1, pp=4, ep=8, zero_stage=1)
    t = _terms(estimate_training(m, 1e10, "h100-sxm", 64, layout=lay))
    vol = 1e10 / 16 * s.experts_per_token * s.d_model * 2.0
    n_a2a = 4 + 2 * lay.recompute_fraction(s.n_layers)
    one = max(1 / 8 * vol / (dev.intra_node_bw * eff), 6 / 8 * vol / (dev.inter_node_bw * eff))
    assert t["ep_all_to_all_time"] == pytest.approx(s.n_layers / 4 * n_a2a * one)


def test_ep_peers_on_a_mesh_use_their_direct_links_and_on_a_torus_the_region_they_span() -> None:
    """MI300X (full mesh of 7 links a GPU): ep=4 peers 2 devices apart have 3 direct links between them, not 7.
    TPU v5e (2-D torus, side 16): 8 ep peers 4 chips apart lie over 32 chips, a region that spans both dimensions."""
    from hwlm.plan.collectives import all_to_all_bytes_time, group_bandwidth
    mi, v5e = get_device("mi300x"), get_device("tpu-v5e")
    t, formula, peers = all_to_all_bytes_time(mi, 4, 1e6, 1.0, stride=2)
    assert t == pytest.approx(3 / 4 * 1e6 / (mi.intra_node_bw * 3 / 7)) and peers == [(3, "fabric")]
    t, _, _ = all_to_all_bytes_time(v5e, 8, 1e6, 1.0, stride=4)
    assert t == pytest.approx(7 / 8 * 1e6 / group_bandwidth(v5e, 32)[0])
    assert group_bandwidth(v5e, 32)[0] == 2 * group_bandwidth(v5e, 8)[0]
