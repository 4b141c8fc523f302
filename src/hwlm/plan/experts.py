"""Mixture-of-experts serving: which expert weights a step reads, and expert parallelism (``ep``).

A decode step reads the dense part (attention, shared experts, dense layers) and only the routed experts
some token of the step picked: with B tokens each choosing k of E experts uniformly, E x (1 - (1 - k/E)^B)
distinct experts per MoE layer.

Expert parallelism (DeepSeek-V3, arXiv:2412.19437, section 3.4; vLLM ``--enable-expert-parallel``; SGLang
``--enable-dp-attention``): a replica of ``tp x ep`` devices keeps its routed experts whole, E/ep per
group of tp devices, and runs attention data-parallel over the ep groups, each on B/ep of the sequences
(and its KV cache), tensor-parallel over its tp devices. Per device:

* weights: dense / tp + routed / (tp x ep) (the dense part is replicated over the ep groups);
* a step reads dense / tp + the touched experts / (tp x ep), the KV cache of its B/ep sequences;
* every MoE layer exchanges each token's hidden state with its k experts' ranks and back: two all-to-alls
  (dispatch, combine) of (B/ep) / tp x k x hidden x 2 bytes per rank over the ep devices
  (:func:`hwlm.plan.collectives.all_to_all_time`), on top of the tp group's two all-reduces per layer. A
  group's tp ranks each send 1/tp of its tokens, not all of them (SP_MOE_SOURCE: the attention all-reduce
  leaves every token on every tp rank, and vLLM splits them over the tp ranks before the experts). The
  ep peers of a device lie tp devices apart: of the ep ranks, r = scale-up domain // tp share a node (or an
  NVL72 rack, a TPU pod), and (ep - r)/ep of the bytes leave it over the inter-node network.

The step takes the mean device's load; routing imbalance (the busiest device waits for the others) is not
modelled.
"""

from __future__ import annotations

from hwlm.errors import PlanError
from hwlm.plan.catalog import Device
from hwlm.plan.collectives import all_to_all_time
from hwlm.plan.models import Model

__all__ = ["moe_parts", "touched_experts", "weights_per_device", "weights_read_per_step", "ep_comm", "check_ep",
           "EP_SOURCE", "SP_MOE_SOURCE"]

SP_MOE_SOURCE = ("vLLM (vllm-project/vllm 00193b8) vllm/config/parallel.py, use_sequence_parallel_moe (tp > 1, "
                 "dp > 1, expert parallel, the DeepEP / all-gather back ends): 'replicated tokens results in useless "
                 "duplicate computation and communication. In this case, ensure the input to the experts is "
                 "sequence parallel to avoid the excess work'")
EP_SOURCE = ("expert parallelism with data-parallel attention: DeepSeek-V3 technical report, arXiv:2412.19437, "
             "section 3.4 (all-to-all dispatch and combine per MoE layer)")


def moe_parts(m: Model) -> tuple[float, float, int]:
    """(dense parameters, parameters of one routed expert in one layer, MoE layers); a dense model is all dense."""
    pc, spec = m.params, m.spec
    if not m.is_moe or spec.n_experts <= spec.experts_per_token:
        return float(pc.total), 0.0, 0
    e, k = spec.n_experts, spec.experts_per_token
    n_moe = spec.n_layers - spec.first_dense_layers
    per_expert = (pc.total - pc.active) / ((e - k) * n_moe)
    return pc.total - n_moe * e * per_expert, per_expert, n_moe


def touched_experts(m: Model, tokens: float) -> float:
    """Distinct routed experts per MoE layer that ``tokens`` tokens pick (each k of E, uniformly)."""
    e, k = m.spec.n_experts, m.spec.experts_per_token
    return e * (1.0 - (1.0 - k / e) ** max(tokens, 0.0))


def weights_per_device(m: Model, bytes_w: float, tp: int = 1, ep: int = 1) -> float:
    """Bytes of weights each device of a ``tp x ep`` replica holds."""
    dense, per_expert, n_moe = moe_parts(m)
    return (dense / tp + n_moe * m.spec.n_experts * per_expert / (tp * ep)) * bytes_w


def weights_read_per_step(m: Model, tokens: float, bytes_w: float, tp: int = 1, ep: int = 1) -> tuple[float, str]:
    """Bytes of weights one device reads in a step of ``tokens`` tokens (the whole replica's), and a description."""
    dense, per_expert, n_moe = moe_parts(m)
    if not n_moe:
        return m.params.total * bytes_w / tp, "all weights / tp"
    hit = touched_experts(m, tokens)
    return ((dense / tp + n_moe * hit * per_expert / (tp * ep)) * bytes_w,
            f"dense part / tp + {hit:.2f} of {m.spec.n_experts} experts per layer / (tp x ep {ep})")


def ep_comm(m: Model, dev: Device, tp: int, ep: int, tokens_per_rank: float, comm_eff: float) -> tuple[float, str]:
    """Seconds of a step's expert-parallel exchange: 2 all-to-alls per MoE layer, and the formula.
    ``tokens_per_rank`` is one ep group's tokens, of which each of its tp ranks sends 1/tp. A replica's
    tp ranks are neighbours, so a device's ep peers (the same tp rank of the other groups) lie tp devices
    apart: ep groups of tp devices that outgrow one node send the share of the bytes bound off it over the
    inter-node network (:func:`hwlm.plan.collectives.all_to_all_bytes_time`)."""
    _, _, n_moe = moe_parts(m)
    if ep <= 1 or not n_moe:
        return 0.0, ""
    sent = tokens_per_rank / tp  # each tp rank sends its 1/tp share of the group's tokens (SP_MOE_SOURCE)
    nbytes = sent * m.spec.experts_per_token * m.spec.d_model * 2.0
    one, formula = all_to_all_time(dev, ep, nbytes, comm_eff, stride=tp)
    share = f" / tp {tp}" if tp > 1 else ""
    return 2 * n_moe * one, f"2 x {n_moe} MoE layers x all-to-all of {tokens_per_rank:.4g} tok{share} x k " \
        f"{m.spec.experts_per_token} x {m.spec.d_model} x 2 B: {formula}"


def check_ep(m: Model, devices: int, tp: int, ep: int) -> None:
    """One-line PlanError when ``ep`` cannot serve this model on these devices."""
    if not isinstance(ep, int) or ep < 1:
        raise PlanError(f"--ep must be a whole number >= 1, got {ep!r}")
    if ep == 1:
        return
    if not m.is_moe:
        raise PlanError(f"--ep {ep}: {m.name} is a dense model; expert parallelism needs a mixture-of-experts model")
    if m.spec.n_experts % ep:
        raise PlanError(f"--ep {ep} does not divide the {m.spec.n_experts} routed experts of {m.name}; "
                        f"choose a divisor of {m.spec.n_experts}")
    if devices % (tp * ep):
        raise PlanError(f"tp={tp} x ep={ep} = {tp * ep} does not divide --devices {devices}; a replica is tp x ep "
                        "devices, so choose degrees whose product divides the devices")
