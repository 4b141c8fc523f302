"""What one training layout costs: the step's time terms (compute, model-parallel and data-parallel
communication, the small-model host and traffic terms) and its memory per device.

:mod:`hwlm.plan.layout_search` asks these for every candidate layout, :mod:`hwlm.plan.training` for the one it
chose; the search context (:class:`_Ctx`) memoizes the answers of one search. Every term is kept as a
:class:`~hwlm.plan.explain.Term` when the caller passes a :class:`~hwlm.plan.explain.Terms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from hwlm.formulas import attention_flops_per_pair, train_flops_per_token
from hwlm.plan.catalog import Device
from hwlm.plan.collectives import all_to_all_bytes_time, group_bandwidth
from hwlm.plan.efficiency import MXU_SOURCE, OP_OVERHEAD_SOURCE, Priors, gemm_shapes, kernels_per_step, shape_efficiency
from hwlm.plan.experts import moe_parts
from hwlm.plan.explain import Terms
from hwlm.plan.models import Model
from hwlm.plan.software import FRAMEWORKS, Stack
from hwlm.plan.parallel import Layout, MemoryBreakdown, link_bandwidth, training_memory

__all__ = ["routed_expert_params"]

# hwlm.formulas.train_flops_per_token, cached: the layout search evaluates the same shape thousands of times.
_flops_per_token = lru_cache(maxsize=1024)(train_flops_per_token)
KORTHIKANTI = "Korthikanti et al. 2022, arXiv:2205.05198"
NARAYANAN = "Narayanan et al. 2021, arXiv:2104.04473, section 3"


@dataclass(frozen=True)
class _Ctx:
    """Everything a layout evaluation needs, resolved once."""

    model: Model
    dev: Device
    devices: int
    precision: str
    tokens: float
    seq_len: int
    batch_tokens: float
    pri: Priors
    train_eff: float | None     # a calibrated end-to-end compute efficiency replaces the roofline
    eff_source: str
    autocast: bool = False      # fp32 weights cast to 16 bits every step (hwlm's loop), not 16-bit weights
    stack: Stack = FRAMEWORKS["megatron"]  # the training framework (fusion, communication overlap)
    user_stack: bool = False    # the user named the framework (else it is the assumed default)
    padding: str | None = None  # Neuron head padding applied to the model (a note), None if none
    capacity_factor: float = 1.0  # MoE token dropping: experts compute this x their share of the tokens
    attention_rate: float | None = None  # FP8 runs: FLOP/s per device of the 16-bit attention-score products
    # Answers the layout search asks for again: _memory by layout, the compute and model-parallel communication
    # terms by the fields they read (_searched). Not copied by ``replace`` (init=False: each context starts empty).
    memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, init=False, repr=False, compare=False)


# Passes over the logits per step (write, max, exp-sum, scale to the gradient, read by the two
# backward products): the fused cross-entropy of hwlm.model / llm.c's fused classifier.
LOGIT_PASSES = 6
CPU_NOTE = ("a CPU core runs one kernel at a time and converts 16-bit elements to fp32 in registers "
            "(no 16-bit vector arithmetic), so element-wise work costs fp32 bytes and nothing overlaps")


def _elem_bytes(ctx: _Ctx) -> float:
    """Bytes per activation element that element-wise kernels pay for."""
    if ctx.precision in ("fp32", "tf32") or ctx.dev.kind == "cpu":
        return 4.0
    return 2.0


def _act_bw(ctx: _Ctx) -> tuple[float, str]:
    """Bandwidth of element-wise traffic: the measured activation-sized copy when known, else DRAM x eff."""
    act = getattr(ctx.dev, "act_bw", None)
    if act:
        return act, f"measured activation-sized copy {act:.4g} B/s"
    return ctx.dev.memory_bw * ctx.pri.decode_bw_eff, f"bw {ctx.dev.memory_bw:.4g} x {ctx.pri.decode_bw_eff:.3g}"


def _small_model_time(ctx: _Ctx, lay: Layout, t: Terms, device_time: float) -> float:
    """Kernel host cost, thin-GEMM operand traffic, logits passes and autocast casts (whole run, per device).

    ``device_time`` is the FLOP and activation time they may hide behind (GPU/TPU only)."""
    spec, dev, pri = ctx.model.spec, ctx.dev, ctx.pri
    cpu = dev.kind == "cpu"
    bw, bw_text = _act_bw(ctx)
    peak, mb_tok = dev.peak_flops(ctx.precision), lay.micro_batch * ctx.seq_len
    micro = t.add("micro_steps_per_device", f"tokens / (dp {lay.dp} x micro-batch {mb_tok} tokens) / pp {lay.pp}",
                  ctx.tokens / (lay.dp * mb_tok) / lay.pp, "")
    s = 4.0 if ctx.precision in ("fp32", "tf32") else 2.0
    extra = 0.0
    for g in gemm_shapes(spec, mb_tok, ctx.seq_len, lay.tp):
        mem, comp = g.operand_elems * s / bw, g.flops / (peak * pri.matmul_eff)
        extra += 3 * g.count * (mem if cpu else max(0.0, mem - comp))  # forward + 2 backward, same matrices
    how = "sum over products of operand bytes / bw" if cpu else "sum of max(0, operand bytes / bw - FLOP time)"
    gemm = t.add("gemm_memory_time", f"micro-steps x 3 x {how} ({s:g} B, {bw_text})", micro * extra, "s",
                 "roofline, Williams et al. 2009; " + (CPU_NOTE if cpu else "GPU kernels overlap loads"))
    logits = t.add("logits_time", f"micro-steps x {mb_tok} tokens x vocab {spec.vocab_size}/tp {lay.tp} x "
                   f"{LOGIT_PASSES} passes x 4 B / {bw:.4g}",
                   micro * mb_tok * spec.vocab_size / lay.tp * LOGIT_PASSES * 4.0 / bw, "s",
                   "fused softmax cross-entropy in fp32 (llm.c fused classifier)")
    casts = 0.0
    if ctx.autocast and ctx.precision != "fp32":
        # Each step casts every weight to 16 bits (read 4 B, write 2) and its gradient back, and the
        # fp32 inputs of the layer's products and their gradients (about 4 x h elements per token).
        per = ctx.model.params.total / (lay.tp * lay.pp) * 12 + mb_tok * spec.n_layers / lay.pp * 4 * spec.d_model * 6
        casts = t.add("autocast_cast_time", f"micro-steps x (params x 12 B + tokens x layers x 4h x 6 B) / {bw:.4g}",
                      micro * per / bw, "s", "torch.autocast: weights cast each forward, gradients cast back")
    over = getattr(dev, "op_overhead_s", None) or pri.op_overhead_s
    src = dev.source("op_overhead_s") if getattr(dev, "op_overhead_s", None) else OP_OVERHEAD_SOURCE
    k = kernels_per_step(spec, ctx.autocast and ctx.precision != "fp32") / lay.pp
    host = t.add("kernel_host_time", f"micro-steps x {k:.4g} kernels x {over:.3g} s", micro * k * over, "s", src)
    busy = device_time + gemm + logits + casts
    exposed = t.add("kernel_overhead_time", "kernel_host_time (CPU: the same cores)" if cpu else
                    f"max(0, kernel_host_time - device time {busy:.4g}) (launches run ahead)",
                    host if cpu else max(0.0, host - busy), "s")
    return gemm + logits + casts + exposed


def _capacity_padding_flops(ctx: _Ctx, t: Terms) -> float:
    """Extra FLOPs of a token-dropping MoE: every expert runs capacity_factor x its even share of the tokens
    (the slots a capacity leaves empty are computed as padding), so the routed experts' products grow by
    (capacity_factor - 1). GShard, Lepikhin et al. 2020, arXiv:2006.16668, section 2.2 (expert capacity);
    Switch Transformer, Fedus et al. 2021, arXiv:2101.03961, section 2.2 (capacity factor)."""
    cf = ctx.capacity_factor
    _, per_expert, n_moe = moe_parts(ctx.model)
    if cf <= 1.0 or not n_moe:
        return 0.0
    routed = 6.0 * n_moe * ctx.model.spec.experts_per_token * per_expert  # train FLOPs per token in experts
    return t.add("capacity_padding_flops", f"tokens x 6 x {n_moe} MoE layers x k {ctx.model.spec.experts_per_token} x "
                 f"{per_expert:.4g} params per expert x (capacity factor {cf:g} - 1)", ctx.tokens * routed * (cf - 1),
                 "FLOP", "GShard, arXiv:2006.16668, section 2.2; Switch Transformer, arXiv:2101.03961, section 2.2")


class _Quiet(Terms):
    """Terms that keep nothing: the layout search only needs the values."""

    def add(self, name: str, formula: str, value: float, unit: str, source: str = "") -> float:
        return float(value)


_QUIET = _Quiet()


def _timing(ctx: _Ctx, lay: Layout, t: Terms | None = None) -> dict[str, float]:
    """Wall-time parts for one layout (whole run). Records terms when ``t`` is given."""
    t = t if t is not None else _QUIET
    spec, pri = ctx.model.spec, ctx.pri
    f_tok = _flops_per_token(spec, ctx.seq_len)
    flops = t.add("flops", f"tokens {ctx.tokens:.4g} x train FLOPs/token {f_tok:.4g} (3 x forward incl. attention)",
                  ctx.tokens * f_tok, "FLOP", "hwlm.formulas (PaLM appendix B convention)")
    frac = lay.recompute_fraction(spec.n_layers)
    compute = _searched(ctx, t, ("compute", lay.dp, lay.tp, lay.pp, lay.micro_batch, frac),
                        lambda: _compute(ctx, lay, t, flops))
    steps = t.add("steps", f"tokens / (global batch {ctx.batch_tokens:.4g} tokens)", ctx.tokens / ctx.batch_tokens, "")
    comm = _searched(ctx, t, ("comm", lay.dp, lay.tp, lay.pp, lay.virtual_stages, lay.ep, frac),
                     lambda: _model_comm(ctx, lay, t))
    dp_step = _dp_comm(ctx, lay, t, compute / steps)
    m = ctx.batch_tokens / ctx.seq_len / (lay.dp * lay.micro_batch)
    busy = compute + comm["tp"] + comm["pp"]
    v = lay.virtual_stages
    bubble = t.add("bubble_time", f"(pp-1)/(v m) = ({lay.pp}-1)/({v} x {m:.4g}) x (compute + tp + pp comm)",
                   (lay.pp - 1) / (v * m) * busy, "s", f"1F1B (interleaved: v chunks) pipeline bubble, {NARAYANAN}.2")
    dp_exposed = t.add("dp_comm_exposed_time", f"steps {steps:.4g} x exposed per step {dp_step:.4g}",
                       steps * dp_step, "s")
    step_total = busy + bubble + dp_exposed
    total = t.add("time", f"(compute + comm + bubble {step_total:.4g}) / (1 - overhead {pri.train_overhead:.3g})",
                  step_total / (1.0 - pri.train_overhead), "s", pri.source)
    return {"flops": flops, "compute": compute, "comm": comm["tp"] + comm["pp"] + dp_exposed,
            "bubble": bubble, "overhead": total - step_total, "time": total}


def _searched(ctx: _Ctx, t: Terms, key: tuple[Any, ...], part: Any) -> Any:
    """``part()``, kept in the context's memo under ``key`` while the layout search runs (terms not kept):
    the compute and model-parallel communication terms depend on a few of a layout's fields only, which
    many layouts (each ZeRO stage, each expert-parallel width) share."""
    if t is not _QUIET:
        return part()
    value = ctx.memo.get(key)
    if value is None:
        value = ctx.memo[key] = part()
    return value


FP8_ATTENTION_SOURCE = ("FP8 training recipes cast the linear layers only: Transformer Engine's recipes default to "
                        "fp8_dpa = False and fp8_mha = False ('Beta features', transformer_engine/common/recipe), "
                        "torchtitan's float8 converter swaps nn.Linear for Float8Linear (docs/float8.md), Intel "
                        "Gaudi's Transformer Engine provides FP8 modules such as te.Linear (docs.habana.ai, 'FP8 "
                        "Training with Intel Gaudi Transformer Engine'); the attention-score products (QK^T, AV) "
                        "run in 16 bits")


def _attention_16bit_time(ctx: _Ctx, t: Terms, rc: float, fill: float) -> float:
    """Seconds of an FP8 run's attention-score products, which FP8 training leaves in 16 bits
    (:data:`FP8_ATTENTION_SOURCE`), at the device's 16-bit matmul rate (``_Ctx.attention_rate``); 0 otherwise."""
    if not ctx.attention_rate:
        return 0.0
    f_att = ctx.tokens * 3 * ctx.seq_len * attention_flops_per_pair(ctx.model.spec)
    return t.add("attention_16bit_time", f"tokens x 3 x seq {ctx.seq_len} x attention FLOPs per pair x {rc:.3g} / "
                 f"({ctx.devices} x 16-bit rate {ctx.attention_rate:.4g}" + (f" x MXU fill {fill:.3f})" if fill < 1
                                                                               else ")"),
                 f_att * rc / (ctx.devices * ctx.attention_rate * fill), "s", FP8_ATTENTION_SOURCE)


def _compute(ctx: _Ctx, lay: Layout, t: Terms, flops: float) -> float:
    """The compute term of the whole run: matrix products, element-wise traffic and the small-model terms,
    or the calibrated compute. Reads the layout's dp, tp, pp, micro-batch and recompute share only."""
    spec, dev, pri, n = ctx.model.spec, ctx.dev, ctx.pri, ctx.devices
    peak = dev.peak_flops(ctx.precision)
    rc = 1.0 + lay.recompute_fraction(spec.n_layers) / 3.0  # recomputed layers run their forward twice
    if ctx.train_eff is not None:
        return t.add("compute_time", f"flops x {rc:.3g} / ({n} x peak {peak:.4g} x calibrated eff {ctx.train_eff})",
                     flops * rc / (n * peak * ctx.train_eff), "s", ctx.eff_source)
    fill, fill_text = shape_efficiency(dev, spec, lay.micro_batch * ctx.seq_len, ctx.seq_len, lay.tp)
    if fill < 1.0:
        t.add("mxu_fill", fill_text, fill, "", MXU_SOURCE)
    pad = _capacity_padding_flops(ctx, t)
    att = _attention_16bit_time(ctx, t, rc, fill)
    f_att = ctx.tokens * 3 * ctx.seq_len * attention_flops_per_pair(spec) if att else 0.0
    mm = t.add("matmul_time", f"(flops{' - attention' if att else ''}{' + capacity padding' if pad else ''}) x {rc:.3g}"
               f" / ({n} devices x peak {peak:.4g} x matmul_eff {pri.matmul_eff:.3g}"
               + (f" x MXU fill {fill:.3f})" if fill < 1.0 else ")") + (" + attention_16bit_time" if att else ""),
               (flops - f_att + pad) * rc / (n * peak * pri.matmul_eff * fill) + att, "s", ctx.eff_source)
    eb = _elem_bytes(ctx)
    bw, bw_text = _act_bw(ctx)
    ew_bytes = 3 * spec.n_layers * pri.act_traffic * 34 * spec.d_model * eb
    ew = t.add("elementwise_time",
               f"tokens x 3 x {spec.n_layers} layers x {pri.act_traffic:.3g} x 34 x h {spec.d_model} x {eb:g} B"
               f" x {rc:.3g} / ({n} x {bw_text})", ctx.tokens * ew_bytes * rc / (n * bw), "s",
               f"{KORTHIKANTI} (34 sbh activation bytes); {ctx.eff_source}"
               + ("; " + CPU_NOTE if dev.kind == "cpu" else ""))
    small = _small_model_time(ctx, lay, t, mm + ew)
    return t.add("compute_time", "matmul_time + elementwise_time + small-model terms", mm + ew + small, "s")


def _model_comm(ctx: _Ctx, lay: Layout, t: Terms) -> dict[str, float]:
    """Tensor- (with expert-) and pipeline-parallel communication of the whole run."""
    spec, dev, eff = ctx.model.spec, ctx.dev, ctx.pri.comm_eff
    up = dev.scale_up_devices
    act = spec.d_model * 2.0  # bytes of one token's hidden state in 16 bits
    tok_dev = ctx.tokens / lay.dp
    out = {"tp": 0.0, "pp": 0.0}
    if lay.tp > 1:
        bw, what, _ = group_bandwidth(dev, lay.tp)
        n_coll = 4 + 2 * lay.recompute_fraction(spec.n_layers)
        hidden = ctx.stack.tp_overlap
        out["tp"] = t.add("tp_comm_time",
                          f"tokens/dp x {spec.n_layers}/pp layers x {n_coll:.3g} all-reduces x 2(t-1)/t x {act:.0f} B"
                          f" / ({what} {bw:.4g} x {eff}) x (1 - {hidden:g} overlapped by {ctx.stack.id})",
                          tok_dev * spec.n_layers / lay.pp * n_coll * 2 * (lay.tp - 1) / lay.tp * act / (bw * eff)
                          * (1.0 - hidden), "s",
                          f"{NARAYANAN}.2 (Megatron: 2 all-reduces forward, 2 backward per layer); overlap: "
                          f"{ctx.stack.source}")
    if lay.pp > 1:
        bw, what = link_bandwidth(dev.intra_node_bw, dev.inter_node_bw, lay.tp * lay.pp, up)
        v = lay.virtual_stages
        # With tp > 1 each rank of a stage sends only its 1/tp slice of the boundary activation and the
        # next stage all-gathers it over the fast link (Narayanan et al. 2021, section 4.1).
        out["pp"] = t.add("pp_comm_time", f"tokens/dp x 2 (activation + gradient) x v {v} x {act:.0f} B / tp {lay.tp}"
                          f" / ({what} {bw:.4g} x {eff})",
                          tok_dev * 2 * v * act / lay.tp / (bw * eff), "s",
                          f"{NARAYANAN}.1 (point-to-point between stages; scatter/gather, section 4.1)")
    if lay.ep > 1:
        out["tp"] += _all_to_all(ctx, lay, t, tok_dev)
    return out


def _dp_comm(ctx: _Ctx, lay: Layout, t: Terms, compute_step: float) -> float:
    """Data-parallel gradient traffic left exposed per step (what the backward pass does not hide)."""
    dev, eff = ctx.dev, ctx.pri.comm_eff
    if lay.dp == 1:
        return 0.0
    bw, what, _ = group_bandwidth(dev, ctx.devices)
    # A node holding g ranks of the data-parallel group sends its share of a ring collective
    # through all g of their NICs at once (NCCL runs one ring per NIC; hierarchical all-reduce,
    # Jia et al. 2018, arXiv:1807.11205), so each rank's network share is g links wide.
    g = min(lay.dp, max(1, dev.devices_per_node // min(lay.tp * lay.pp, dev.devices_per_node)))
    if what == "inter-node network" and g > 1:
        bw, what = min(dev.intra_node_bw or math.inf, g * bw), f"{g} NICs per node, inter-node network"
    routed = routed_expert_params(ctx.model)
    vol = 2.0 * (ctx.model.params.total - routed) / (lay.tp * lay.pp)
    vol_e = 2.0 * routed / (lay.tp * lay.pp * lay.ep)
    edp = lay.dp // lay.ep  # experts' gradients are reduced over the ranks holding the same experts
    k = 3.0 if lay.zero_stage >= 3 else 2.0
    t_dp = t.add("dp_comm_per_step", f"{k:g}(dp-1)/dp x grads {vol:.4g} B"
                 + (f" + {k:g}(dp/ep-1)/(dp/ep) x expert grads {vol_e:.4g} B" if routed else "")
                 + f" / ({what} {bw:.4g} x {eff})",
                 k * ((lay.dp - 1) / lay.dp * vol + (edp - 1) / edp * vol_e) / (bw * eff), "s",
                 "ring all-reduce / reduce-scatter + all-gather (ZeRO-3: + all-gather), arXiv:1910.02054")
    window = compute_step if lay.zero_stage >= 3 else compute_step * 2.0 / 3.0
    return t.add("dp_comm_exposed_per_step", f"max(0, {t_dp:.4g} - overlap window {window:.4g})",
                 max(0.0, t_dp - window), "s",
                 "assumed: DP traffic overlaps the backward pass (ZeRO-3/FSDP: the whole step)")


def _all_to_all(ctx: _Ctx, lay: Layout, t: Terms, tok_dev: float) -> float:
    """Expert-parallel token exchange (whole run): each MoE layer sends every token's hidden state to its k
    experts' ranks and back, forward and backward (4 all-to-alls; full recompute repeats the forward two).
    A rank keeps 1/ep of its tokens' traffic local. The ep ranks are data-parallel ranks, so they lie
    tp x pp devices apart (the layout's tp and pp ranks are neighbours, as in :func:`_dp_comm`): the share
    bound off the node crosses the network (:func:`hwlm.plan.collectives.all_to_all_bytes_time`). Not
    overlapped with compute (DeepSeek-V3's DualPipe overlaps it; arXiv:2412.19437, section 3.2.1)."""
    spec, dev, eff = ctx.model.spec, ctx.dev, ctx.pri.comm_eff
    n_moe = spec.n_layers - spec.first_dense_layers
    n_a2a = 4 + 2 * lay.recompute_fraction(spec.n_layers)
    vol = tok_dev / lay.tp * spec.experts_per_token * spec.d_model * 2.0
    one, formula, _ = all_to_all_bytes_time(dev, lay.ep, vol, eff, stride=lay.tp * lay.pp)
    return t.add("ep_all_to_all_time", f"{n_moe}/pp MoE layers x {n_a2a:.3g} all-to-alls x (tokens/dp/tp x k "
                 f"{spec.experts_per_token} x {spec.d_model} x 2 B = {vol:.4g} B, ep peers tp x pp "
                 f"{lay.tp * lay.pp} devices apart: {formula})", n_moe / lay.pp * n_a2a * one, "s",
                 "expert parallelism, GShard (Lepikhin et al. 2020, arXiv:2006.16668, section 3.2)")


def routed_expert_params(m: Model) -> float:
    """Parameters of the routed experts (all of them): what expert parallelism shards; 0 for a dense model."""
    spec, pc = m.spec, m.params
    if not m.is_moe or spec.n_experts <= spec.experts_per_token:
        return 0.0
    return (pc.total - pc.active) * spec.n_experts / (spec.n_experts - spec.experts_per_token)


def _activation_count(ctx: _Ctx) -> str:
    """The framework's count of saved activations; hwlm's own under ``autocast`` (fp32 weights cast per
    matmul: hwlm's loop, whatever the stack is called)."""
    return "hwlm" if ctx.autocast else ctx.stack.activations


def _memory(ctx: _Ctx, lay: Layout) -> MemoryBreakdown:
    # training_memory reads a layout's degrees, ZeRO stage, micro-batch and fully recomputed layers only
    # (not the pipeline schedule, nor how the recompute mode is named): the memo's key.
    L = ctx.model.spec.n_layers
    k = round(lay.recompute_fraction(L) * L) if lay.recompute in ("full", "partial") else 0
    key = ("memory", lay.dp, lay.tp, lay.pp, lay.zero_stage, lay.micro_batch, lay.ep, k)
    mem = ctx.memo.get(key)
    if mem is None:
        mem = ctx.memo[key] = _memory_of(ctx, lay)
    return mem


def _memory_of(ctx: _Ctx, lay: Layout) -> MemoryBreakdown:
    # The routed experts are sharded over ep ranks of the data-parallel group as well (their ZeRO
    # sharding then spans the dp/ep "expert data parallel" ranks); the rest of the model as before.
    routed = routed_expert_params(ctx.model)
    count = _activation_count(ctx)
    mem = training_memory(ctx.model.spec, ctx.model.params.total - routed, lay, ctx.seq_len, ctx.dev.memory_bytes,
                          ctx.precision, ctx.dev.kind, count)
    if routed:
        ex = training_memory(ctx.model.spec, routed, _relayout(lay, dp=lay.dp // lay.ep, tp=lay.tp * lay.ep),
                             ctx.seq_len, ctx.dev.memory_bytes, ctx.precision, ctx.dev.kind, count)
        mem = replace(mem, weights=mem.weights + ex.weights, gradients=mem.gradients + ex.gradients,
                      optimizer=mem.optimizer + ex.optimizer)
    if count == "hwlm" and lay.devices == 1 and ctx.batch_tokens <= ctx.seq_len * lay.micro_batch:
        # hwlm's loop in one process stepping once per micro-batch frees its gradients between steps (no DDP
        # buckets, no accumulation): the peak is the larger end of the backward (formulas.training_memory).
        mem = replace(mem, gradients_at_forward=False)
    return mem


def _relayout(lay: Layout, **changes: Any) -> Layout:
    """``dataclasses.replace`` for a Layout without its per-call field introspection (the layout search
    makes tens of thousands of these; ``replace`` was a fifth of ``hwlm plan recommend``'s time)."""
    d = dict(lay.__dict__)
    d.update(changes)
    return Layout(**d)
