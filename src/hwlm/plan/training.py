"""Training estimates: FLOPs, memory per device, time, energy, CO2 and cost of a training run.

Steady-state time = (matrix products at a fraction of peak + element-wise traffic at a fraction of
bandwidth + the small-model terms) + exposed communication + pipeline bubble: what the step loop
takes, the ``step_time_s`` and ``tokens_per_s`` a benchmark or a training log shows. The whole
run's ``time_s`` divides that by (1 - overhead): long runs also lose time to evaluations,
checkpoints and restarts (fitted on published GPU-hour totals). The efficiency parameters come
from :mod:`hwlm.plan.efficiency` (priors fitted on published runs, or a calibration file). A
calibrated ``train`` efficiency is a steady-state rate (``hwlm bench train``), so it replaces the
compute term only: the calibrating workload's ``tokens_per_s`` is reproduced, and its whole-run
time still adds the overhead. Every step is kept as a :class:`~hwlm.plan.explain.Term`.

The small-model terms (:func:`_small_model_time`) are what a 1M-parameter model on a laptop
spends besides FLOPs: the host cost of each kernel, the operand traffic of thin matrix products,
the softmax passes over the logits and (``autocast=True``, hwlm's own loop) the casts. They vanish
at the scale of the published runs, which the validation report checks.

    >>> est = estimate_training("gpt2", tokens=10e9, hardware="a100-sxm-80gb", devices=8)  # doctest: +SKIP
    >>> est.time_s, est.layout.describe()                                                 # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Iterator

from hwlm.errors import PlanError
from hwlm.formulas import ADAM_MIXED, train_flops_per_token
from hwlm.plan.catalog import Device
from hwlm.plan.collectives import all_to_all_bytes_time, group_bandwidth
from hwlm.plan.efficiency import (ACHIEVABLE_SOURCE, DEFAULT_GRID_KG_PER_KWH, GRID_SOURCE, MXU_SOURCE, OP_OVERHEAD_SOURCE,
                                  PUE_SOURCE, Calibration, Priors, gemm_shapes, kernels_per_step, load_calibration,
                                  priors_for, shape_efficiency)
from hwlm.plan.experts import moe_parts
from hwlm.plan.explain import Term, Terms
from hwlm.plan.jobs import TRAIN_PRECISIONS, TrainingJob, missing_figure_notes, resolve_hardware
from hwlm.plan.machine import THIS_MACHINE
from hwlm.plan.models import PAD_SOURCE, PADS_HEADS, Model, get_model, pad_heads
from hwlm.plan.software import FRAMEWORKS, Stack, default_framework, get_framework
from hwlm.plan.parallel import (USABLE_MEMORY_FRACTION, Layout, MemoryBreakdown, link_bandwidth, training_memory,
                                validate_layout)

__all__ = ["TrainingEstimate", "TrainingJob", "estimate_training", "TRAIN_PRECISIONS", "DEFAULT_BATCH_TOKENS"]

SCHEDULES = ("1f1b", "interleaved")
# Default global batch ~4M tokens: Llama 2 (arXiv:2307.09288, section 2.2) and GPT-3 175B (3.2M).
DEFAULT_BATCH_TOKENS = 4 * 1024 * 1024
KORTHIKANTI = "Korthikanti et al. 2022, arXiv:2205.05198"
NARAYANAN = "Narayanan et al. 2021, arXiv:2104.04473, section 3"


@dataclass
class TrainingEstimate:
    """The prediction for one training run. Times in seconds, memory in bytes."""

    model: str
    hardware: str
    devices: int
    precision: str
    tokens: float
    seq_len: int
    global_batch: int
    layout: Layout
    fits: bool
    flops: float
    memory: MemoryBreakdown
    time_s: float
    compute_time_s: float
    comm_time_s: float
    bubble_time_s: float
    overhead_time_s: float
    mfu: float
    energy_kwh: float | None
    co2_kg: float | None
    cost_usd: float | None
    smallest_fitting: str | None = None
    terms: list[Term] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    framework: str = ""
    max_micro_batch: int = 0    # the largest micro-batch (sequences per device) that fits this layout

    @property
    def device_hours(self) -> float:
        return self.time_s * self.devices / 3600.0

    @property
    def memory_per_device_bytes(self) -> float:
        return self.memory.total

    @property
    def steady_time_s(self) -> float:
        """The step loop's time for all tokens, without evaluations, checkpoints and restarts."""
        return self.time_s - self.overhead_time_s

    @property
    def step_time_s(self) -> float:
        """Seconds per optimizer step (one global batch), steady state."""
        return self.steady_time_s * self.global_batch * self.seq_len / self.tokens

    @property
    def tokens_per_s(self) -> float:
        """Training tokens per second of the whole job in steady state (what a benchmark measures)."""
        return self.tokens / self.steady_time_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "hwlm-plan-train", "model": self.model, "hardware": self.hardware, "devices": self.devices,
            "precision": self.precision, "tokens": self.tokens, "seq_len": self.seq_len,
            "global_batch": self.global_batch, "layout": self.layout.to_dict(), "fits": self.fits,
            "smallest_fitting": self.smallest_fitting, "flops": self.flops, "time_s": self.time_s,
            "time_days": self.time_s / 86400, "device_hours": self.device_hours,
            "steady_time_s": self.steady_time_s, "step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s,
            "run_tokens_per_s": self.tokens / self.time_s,
            "memory_per_device_bytes": self.memory.total,
            "memory_breakdown_bytes": {"weights": self.memory.weights, "gradients": self.memory.gradients,
                                       "optimizer": self.memory.optimizer, "activations": self.memory.activations,
                                       "capacity": self.memory.capacity},
            "compute_time_s": self.compute_time_s, "comm_time_s": self.comm_time_s,
            "bubble_time_s": self.bubble_time_s, "overhead_time_s": self.overhead_time_s, "mfu": self.mfu,
            "energy_kwh": self.energy_kwh, "co2_kg": self.co2_kg, "cost_usd": self.cost_usd,
            "framework": self.framework, "max_micro_batch": self.max_micro_batch, "notes": self.notes, "terms": [t.to_dict() for t in self.terms],
        }


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
    # Answers the layout search asks for again: _memory by layout, the compute and model-parallel communication
    # terms by the fields they read (_searched). Not copied by ``replace`` (init=False: each context starts empty).
    memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, init=False, repr=False, compare=False)


# Passes over the logits per step (write, max, exp-sum, scale to the gradient, read by the two
# backward products): the fused cross-entropy of hwlm.model / llm.c's fused classifier.
LOGIT_PASSES = 6
CPU_NOTE = ("a CPU core runs one kernel at a time and converts 16-bit elements to fp32 in registers "
            "(no 16-bit vector arithmetic), so element-wise work costs fp32 bytes and nothing overlaps")


# hwlm.formulas.train_flops_per_token, cached: the layout search evaluates the same shape thousands of times.
_flops_per_token = lru_cache(maxsize=1024)(train_flops_per_token)


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
    mm = t.add("matmul_time", f"(flops{' + capacity padding' if pad else ''}) x {rc:.3g} / ({n} devices x peak "
               f"{peak:.4g} x matmul_eff {pri.matmul_eff:.3g}" + (f" x MXU fill {fill:.3f})" if fill < 1.0 else ")"),
               (flops + pad) * rc / (n * peak * pri.matmul_eff * fill), "s", ctx.eff_source)
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


def _pow2_upto(n: int) -> list[int]:
    return [2 ** i for i in range(int(math.log2(max(n, 1))) + 1)]


def _virtual_stage_choices(fixed: dict[str, Any], pp: int, n_layers: int) -> list[int]:
    """Model chunks per device to try. Interleaved 1F1B (v chunks per device) shrinks the bubble
    v-fold for v-fold point-to-point traffic (Narayanan et al. 2021, section 2.2.2), so the best v
    depends on the link: ``schedule="interleaved"`` tries every v from 2 up to one layer per chunk
    and keeps the fastest; ``"1f1b"`` is plain 1F1B; no schedule tries 1, 2 and 4."""
    if fixed.get("virtual_stages"):
        return [fixed["virtual_stages"]]
    if pp == 1 or fixed.get("schedule") == "1f1b":
        return [1]
    if fixed.get("schedule") == "interleaved":
        return list(range(2, max(2, n_layers // pp) + 1))
    return [1, 2, 4]


def _candidate_fields(ctx: _Ctx, fixed: dict[str, Any]) -> Iterator[tuple[int, int, int, int, Any, int, int, int]]:
    """(dp, tp, pp, zero_stage, recompute, micro_batch, virtual_stages, ep) of the layouts to try, simplest
    first: dp with ZeRO/FSDP, then tp inside the node, then pp. Fields, not Layouts: the search skips most
    of them before it needs one."""
    spec, n = ctx.model.spec, ctx.devices
    tps = [fixed["tp"]] if fixed.get("tp") else [
        x for x in _pow2_upto(min(n, ctx.dev.scale_up_devices, spec.n_heads)) if spec.n_heads % x == 0]
    pps = [fixed["pp"]] if fixed.get("pp") else [x for x in _pow2_upto(min(n, spec.n_layers))]
    zeros = [fixed["zero_stage"]] if fixed.get("zero_stage") is not None else [0, 1, 2, 3]
    eps = [fixed["ep"]] if fixed.get("ep") else [1] + [x for x in _pow2_upto(min(n, spec.n_experts))[1:]
                                                       if spec.n_experts > 1 and spec.n_experts % x == 0]
    rcs = [fixed["recompute"]] if fixed.get("recompute") else ["selective", "partial"]
    mb = fixed.get("micro_batch") or 1
    seqs = ctx.batch_tokens / ctx.seq_len
    for pp in pps:
        vss = _virtual_stage_choices(fixed, pp, spec.n_layers)
        for tp in tps:
            # Pipeline only once tensor parallelism fills its domain (Narayanan et al. 2021, takeaway 1).
            if n % (tp * pp) or (n // (tp * pp)) * mb > seqs or pp > 1 and tp != tps[-1] and not fixed.get("pp"):
                continue
            dp = n // (tp * pp)
            eps_dp = [e for e in eps if dp % e == 0]
            for vs in (v for v in vss if pp * v <= spec.n_layers):
                for rc in rcs:
                    for z in zeros:
                        for ep in eps_dp:
                            yield dp, tp, pp, z, rc, mb, vs, ep


def _candidates(ctx: _Ctx, fixed: dict[str, Any]) -> list[Layout]:
    """The layouts of :func:`_candidate_fields`, in its order."""
    return [Layout(dp=dp, tp=tp, pp=pp, zero_stage=z, recompute=rc, micro_batch=mb, virtual_stages=vs, ep=ep)
            for dp, tp, pp, z, rc, mb, vs, ep in _candidate_fields(ctx, fixed)]


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


def _fit_partial(ctx: _Ctx, lay: Layout) -> Layout | None:
    """The fewest fully recomputed layers (rest selective) that make ``lay`` fit; None if none do."""
    L = ctx.model.spec.n_layers

    def mem(k: int) -> MemoryBreakdown:
        return _memory(ctx, _relayout(lay, recompute="partial", recompute_layers=k))
    if mem(0).fits:  # k = 0 fitting implies every k does
        return _relayout(lay, recompute="partial", recompute_layers=0)
    if not mem(L).fits:
        return None
    # Memory is linear in k from k = 1 on (k = 0 lacks the one recomputed layer's set that is alive
    # again in its backward, so a line through k = 0 would stop a layer or more short).
    m1, mL = mem(1), mem(L)
    excess = m1.total - m1.capacity * USABLE_MEMORY_FRACTION
    k = 1 if excess <= 0 or L == 1 else min(L, 1 + math.ceil(excess / ((m1.total - mL.total) / (L - 1))))
    while k < L and not mem(k).fits:  # rounding: at most a step or two
        k += 1
    return _relayout(lay, recompute="full" if k == L else "partial", recompute_layers=k if k < L else 0)


def _time_lower_bound(ctx: _Ctx, lay: Layout) -> float:
    """A bound :func:`_timing`'s time never goes under, so the layout search can skip layouts that cannot
    win: the time without its data-parallel traffic (>= 0), that is (compute + tp and pp communication) x
    (1 + the pipeline bubble's (pp-1)/(v m)) with the long-run overhead, less 1e-9 for rounding. A layout
    with recompute="partial" and no layers chosen yet is bounded as if none were recomputed (each
    recomputed layer only adds time: compute = max(device time, host time), all terms grow with it)."""
    spec = ctx.model.spec
    frac = lay.recompute_fraction(spec.n_layers)
    flops = ctx.tokens * _flops_per_token(spec, ctx.seq_len)
    compute = _searched(ctx, _QUIET, ("compute", lay.dp, lay.tp, lay.pp, lay.micro_batch, frac),
                        lambda: _compute(ctx, lay, _QUIET, flops))
    comm = _searched(ctx, _QUIET, ("comm", lay.dp, lay.tp, lay.pp, lay.virtual_stages, lay.ep, frac),
                     lambda: _model_comm(ctx, lay, _QUIET))
    m = ctx.batch_tokens / ctx.seq_len / (lay.dp * lay.micro_batch)
    busy = compute + comm["tp"] + comm["pp"]
    return busy * (1.0 + (lay.pp - 1) / (lay.virtual_stages * m)) / (1.0 - ctx.pri.train_overhead) * (1.0 - 1e-9)


def _choose(ctx: _Ctx, fixed: dict[str, Any]) -> tuple[Layout, bool]:
    """The fastest fitting layout (a simpler one wins unless the other is >3% faster); else the smallest."""
    best: tuple[float, Layout] | None = None
    seen: set[tuple[int, int, int, str, int, int]] = set()
    bounds: dict[tuple[Any, ...], float] = {}
    tried = False
    for dp, tp, pp, z, rc, mb, vs, ep in _candidate_fields(ctx, fixed):
        tried = True
        # More ZeRO sharding only adds traffic, so for a fixed recompute mode the first stage that
        # fits is the one; under partial recompute it also cuts the recomputed layers, so try each.
        key = (tp, pp, vs, rc, z if rc == "partial" else -1, ep)
        if key in seen:
            continue
        # A layout that cannot beat the best even at its bound is skipped before its memory is counted. The
        # bound reads neither the ZeRO stage nor (before partial recompute is fitted: as if no layer were
        # recomputed) the recompute mode, so one of the same key further on has it too; the best only
        # improves, so that one is skipped as well, as ``seen`` would have skipped it.
        if best is not None:
            group = (dp, tp, pp, vs, ep, mb, rc == "full")
            bound = bounds.get(group)
            if bound is None:
                bound = bounds[group] = _time_lower_bound(ctx, Layout(
                    dp=dp, tp=tp, pp=pp, zero_stage=z, recompute=rc, micro_batch=mb, virtual_stages=vs, ep=ep))
            if bound >= best[0] * 0.97:
                continue
        lay = Layout(dp=dp, tp=tp, pp=pp, zero_stage=z, recompute=rc, micro_batch=mb, virtual_stages=vs, ep=ep)
        if rc == "partial":
            fitted = _fit_partial(ctx, lay)
            if fitted is None or fitted.recompute_fraction(ctx.model.spec.n_layers) == 0:
                continue  # selective already covers k = 0
            lay = fitted
        if not _memory(ctx, lay).fits:
            continue
        seen.add(key)
        if best is not None and _time_lower_bound(ctx, lay) >= best[0] * 0.97:
            continue  # even its bound could not beat the best: the choice is unchanged
        time = _timing(ctx, lay)["time"]
        if best is None or time < best[0] * 0.97:
            best = (time, lay)
    if best is not None:
        return best[1], True
    if not tried:
        raise PlanError(f"no layout of {ctx.devices} devices fits the given tp/pp and a global batch of "
                        f"{ctx.batch_tokens / ctx.seq_len:.0f} sequences; raise --global-batch or set --tp/--pp")
    full = [replace(c, recompute="full") if c.recompute == "partial" else c for c in _candidates(ctx, fixed)]
    return min(full, key=lambda c: _memory(ctx, c).total), False


def _grow_micro_batch(ctx: _Ctx, lay: Layout) -> Layout:
    """Double the micro-batch while it divides the batch per device, fits and is no slower.

    Fewer, larger micro-steps pay the per-kernel cost fewer times (a small model gets faster; a large
    one stays as fast), as training scripts use the largest micro-batch that fits. Not under
    pipelining, where fewer micro-batches per step would also widen the bubble."""
    if lay.pp > 1:
        return lay
    per_dev = ctx.batch_tokens / ctx.seq_len / lay.dp
    best, t_best = lay, _timing(ctx, lay)["time"]
    mb = lay.micro_batch * 2
    while mb <= per_dev and per_dev % mb == 0:
        cand = replace(best, micro_batch=mb)
        if not _memory(ctx, cand).fits:
            break
        t = _timing(ctx, cand)["time"]
        if t > t_best * (1 + 1e-9):
            break
        best, t_best, mb = cand, t, mb * 2
    return best


def _max_micro_batch(ctx: _Ctx, lay: Layout, limit: int = 1 << 16) -> int:
    """The largest power-of-two micro-batch that fits ``lay`` (0: not even one sequence)."""
    if not _memory(ctx, _relayout(lay, micro_batch=1)).fits:
        return 0
    mb = 1
    while mb * 2 <= limit and _memory(ctx, _relayout(lay, micro_batch=mb * 2)).fits:
        mb *= 2
    return mb


def _smallest_fitting(ctx: _Ctx, fixed: dict[str, Any]) -> str | None:
    """The fewest devices (powers of two, then whole nodes) on which some layout fits."""
    counts = sorted({*(2 ** i for i in range(21)), *(ctx.dev.devices_per_node * 2 ** i for i in range(18))})
    free = {k: v for k, v in fixed.items() if k in ("recompute", "micro_batch", "virtual_stages", "schedule")}
    for n in counts:
        if n <= ctx.devices:
            continue
        c = replace(ctx, devices=n, batch_tokens=max(ctx.batch_tokens, n * ctx.seq_len))
        for lay in _candidates(c, free):
            if lay.recompute == "partial":
                lay = _fit_partial(c, lay) or lay
            if _memory(c, lay).fits:
                return f"{n} x {ctx.dev.id} with {lay.describe()}"
    return None


def _resolve_calibration(dev: Device, precision: str, calibration: Any) -> tuple[Priors, float | None, str]:
    maf = dev.achievable_flops(precision)
    pri = priors_for(dev.kind, precision, dev.peak_flops(precision), dev.memory_bw, achievable=maf)
    cal: Calibration | None = load_calibration(calibration)
    source = f"prior for {dev.kind}/{precision}: {pri.source}" + (
        f"; x achievable {maf:.4g} / peak ({ACHIEVABLE_SOURCE}; {dev.source('achievable')})" if maf else "")
    if dev.id == THIS_MACHINE:
        # Its peaks are rates measured here (large matmul, copy): large products reach them by construction.
        pri = replace(pri, matmul_eff=1.0, decode_bw_eff=1.0)
        source = (f"this machine's measured rates as peaks (matmul and copy efficiency 1); other priors for "
                  f"{dev.kind}: {pri.source}")
    if cal is None:
        return pri, None, source
    train = cal.lookup(dev.id, precision, "train")
    mm = cal.lookup(dev.id, precision, "matmul")
    bw = cal.lookup(dev.id, precision, "membw") or cal.lookup(dev.id, precision, "decode")
    if mm:
        pri = replace(pri, matmul_eff=mm.efficiency)
    if bw:
        pri = replace(pri, decode_bw_eff=bw.efficiency)
    used = [e for e in (train, mm, bw) if e]
    if used:
        source = "calibration: " + "; ".join(f"{e.phase} {e.efficiency} ({e.source})" for e in used)
    return pri, (train.efficiency if train else None), source


def estimate_training(model: str | Model | TrainingJob, tokens: float | None = None, hardware: str | Device | None = None,
                      devices: int = 1, **options: Any) -> TrainingEstimate:
    """Predict a training run: ``estimate_training(TrainingJob(...))``, or the same fields as arguments
    (``estimate_training("llama-2-7b", 2e12, "a100-80gb", 256, precision="bf16")``); see
    :class:`~hwlm.plan.jobs.TrainingJob` for every field and its meaning.

    ``layout=None`` picks one (given tp/pp/zero_stage/recompute are kept); a layout that does not
    fit in memory is not an error: ``fits`` is False and ``smallest_fitting`` names what would fit.
    ``schedule`` is the pipeline schedule: ``"1f1b"``, ``"interleaved"`` (the number of chunks
    per device is chosen unless ``virtual_stages`` is given) or None (chosen).
    ``global_batch`` is in sequences (default ~4M tokens). ``power_w`` replaces the catalog TDP.
    ``find_smallest=False`` skips the search for the smallest fitting device count (sweeps that try
    every count anyway). ``autocast=True`` models fp32 weights under ``torch.autocast`` (hwlm's training
    loop: casts every step) rather than the 16-bit weights of Megatron-style runs.
    """
    if isinstance(model, TrainingJob):
        if tokens is not None or hardware is not None or options:
            raise PlanError("pass either a TrainingJob or the job's fields as arguments, not both")
        job = model
    else:
        job = TrainingJob(model=model, tokens=tokens if tokens is not None else 0.0, hardware=hardware,
                          devices=devices, **options)
    return _estimate(job)


def _check_network(dev: Device, devices: int) -> None:
    """Refuse a job that leaves one scale-up domain on a device whose catalog entry gives no link at all.

    With neither ``inter_node_bw`` nor ``intra_node_bw`` the collectives would fall back to an assumed PCIe
    link inside one host (``FALLBACK_LINK_BW``), which says nothing about a network between hosts: a
    128-socket CPU fleet would be costed as if every socket had a 32 GB/s NIC (a 2-socket server usually
    has one 100-200 Gb/s NIC, 6-12 GB/s per socket). Rather than invent a network, the planner plans
    what the catalog describes; a user with a real cluster gives its figure in a catalog override."""
    domain = max(dev.devices_per_node, dev.scale_up_devices)
    if devices > domain and dev.inter_node_bw is None and dev.intra_node_bw is None:
        raise PlanError(f"{dev.id} has no network figure in the catalog (no inter_node_bw or intra_node_bw), so a "
                        f"job on {devices} devices across nodes cannot be costed; use at most {domain} "
                        f"(one node), or add inter_node_bw in a catalog override")


def _estimate(job: TrainingJob) -> TrainingEstimate:
    m = get_model(job.model)
    dev = resolve_hardware(job.hardware, job.calibration)
    # Neuron pads the heads up to a multiple of a tp degree that does not divide them (the inference rule,
    # hwlm.plan.models.pad_heads): the padded model is what the devices train.
    tp_asked = job.layout.tp if job.layout is not None else job.tp
    padding = None
    if tp_asked and dev.vendor in PADS_HEADS:
        m, padding = pad_heads(m, tp_asked)
    devices, precision = job.devices, job.precision
    dev.peak_flops(precision)  # PlanError naming the dtypes the device has
    _check_network(dev, devices)
    if job.schedule not in (None, *SCHEDULES):
        raise PlanError(f"pipeline schedule {job.schedule!r} is not known; choose one of {', '.join(SCHEDULES)}")
    seq = int(job.seq_len or m.seq_len)
    pri, train_eff, eff_source = _resolve_calibration(dev, precision, job.calibration)
    stack = get_framework(job.framework, dev) if job.framework else default_framework(dev)
    # Fusion changes the element-wise traffic only (the fitted prior is the reference stack's).
    pri = replace(pri, act_traffic=pri.act_traffic * stack.elementwise)
    # Default batch: ~4M tokens, but at least one sequence per 8 devices (a 16K-GPU run needs a
    # larger batch: Llama 3 405B used 16M tokens, arXiv:2407.21783, section 3.4.1).
    gb = int(job.global_batch or max(1, round(DEFAULT_BATCH_TOKENS / seq), math.ceil(devices / 8)))
    ctx = _Ctx(model=m, dev=dev, devices=devices, precision=precision, tokens=float(job.tokens), seq_len=seq,
               batch_tokens=float(gb * seq), pri=pri, train_eff=train_eff, eff_source=eff_source,
               autocast=job.autocast, stack=stack, user_stack=bool(job.framework), padding=padding,
               capacity_factor=float(job.capacity_factor or 1.0))
    tp, pp, micro_batch = job.tp, job.pp, job.micro_batch
    fixed = {"tp": tp, "pp": pp, "zero_stage": job.zero_stage, "recompute": job.recompute,
             "micro_batch": micro_batch, "virtual_stages": job.virtual_stages, "schedule": job.schedule,
             "ep": job.ep}
    if job.layout is None:  # check the given degrees once, with the first layout they allow
        tp_, pp_ = tp or 1, pp or 1
        if devices % (tp_ * pp_):
            raise PlanError(f"tp={tp_} x pp={pp_} does not divide --devices {devices}; "
                            f"choose degrees whose product divides {devices}")
        validate_layout(m.spec, devices, Layout(dp=devices // (tp_ * pp_), tp=tp_, pp=pp_,
                                                zero_stage=job.zero_stage or 0,
                                                recompute=job.recompute or "selective",  # type: ignore[arg-type]
                                                micro_batch=micro_batch or 1,
                                                virtual_stages=job.virtual_stages or 1, ep=1), m.name)
        if job.ep and ((devices // (tp_ * pp_)) % job.ep or m.spec.n_experts % job.ep or not m.is_moe):
            raise PlanError(f"ep={job.ep} must divide dp={devices // (tp_ * pp_)} and the {m.spec.n_experts} routed "
                            f"experts of {m.name}" + ("" if m.is_moe else " (a dense model: expert parallelism "
                                                      "needs mixture-of-experts)"))
        lay, fits = _choose(ctx, fixed)
        if fits and not micro_batch:
            lay = _grow_micro_batch(ctx, lay)
    else:
        validate_layout(m.spec, devices, job.layout, m.name)
        lay, fits = job.layout, _memory(ctx, job.layout).fits
    if gb < lay.dp * lay.micro_batch:
        raise PlanError(f"global batch {gb} sequences is smaller than dp={lay.dp} x micro_batch={lay.micro_batch}; "
                        f"raise --global-batch or use fewer devices")
    return _finish(ctx, lay, fits, fixed if job.find_smallest else None, job.pue, job.grid_intensity,
                   job.price_per_hour, job.power_w)


def energy_terms(t: Terms, dev: Device, dh: float, frac: float, pue: float, grid: float,
            power_w: float | None) -> tuple[float | None, float | None]:
    """kWh and kg CO2 for ``dh`` device-hours; None when neither the catalog nor the user gives a power."""
    if power_w is None and dev.tdp_w is None:
        return None, None
    power = power_w if power_w is not None else frac * dev.tdp_w  # type: ignore[operator]
    how = "user power" if power_w is not None else f"TDP x {frac}"
    energy = t.add("energy", f"device_hours x {power:g} W ({how}) x PUE {pue} / 1000", dh * power * pue / 1000, "kWh",
                   f"{'user' if power_w is not None else dev.source('tdp_w')}; {PUE_SOURCE}")
    co2 = t.add("co2", f"energy x {grid} kg/kWh", energy * grid, "kg",
                GRID_SOURCE if grid == DEFAULT_GRID_KG_PER_KWH else "user grid intensity")
    return energy, co2


def _finish(ctx: _Ctx, lay: Layout, fits: bool, fixed: dict[str, Any] | None, pue: float, grid: float,
            price: float | None, power_w: float | None) -> TrainingEstimate:
    dev, n = ctx.dev, ctx.devices
    t = Terms()
    mem = _memory(ctx, lay)
    t.add("memory_weights", f"2 B x params / (tp x pp{' x dp' if lay.zero_stage >= 3 else ''})", mem.weights, "B",
          "arXiv:1910.02054 section 3.1")
    t.add("memory_gradients", f"2 B x params / (tp x pp{' x dp' if lay.zero_stage >= 2 else ''})", mem.gradients, "B")
    t.add("memory_optimizer", f"12 B (fp32 master, m, v) x params / (tp x pp{' x dp' if lay.zero_stage >= 1 else ''})",
          mem.optimizer, "B", f"{ADAM_MIXED.total:g} B/param mixed-precision Adam, arXiv:1910.02054")
    fp32 = ctx.precision in ("fp32", "tf32")
    logit_text = "logits + fp32 gradient, 8" if fp32 else "16-bit logits + fp32 copy + fp32 gradient, 10"
    t.add("memory_activations", f"{ctx.model.spec.n_layers} layers x {lay.recompute} recompute, s={ctx.seq_len}, "
          f"b={lay.micro_batch}, /tp, {'4' if fp32 else '2'}-byte + logits ({logit_text} B per element), "
          f"{_activation_count(ctx)} count", mem.activations, "B",
          KORTHIKANTI + " (34 sbh per layer; Megatron-style stacks)" if _activation_count(ctx) == "korthikanti"
          else "hwlm.formulas.saved_activation_bytes_per_layer (hwlm's model under autocast, tested against autograd)")
    t.add("memory_per_device", "weights + gradients + optimizer + activations", mem.total, "B")
    t.add("memory_usable", f"capacity {dev.memory_bytes:.4g} x {USABLE_MEMORY_FRACTION}",
          dev.memory_bytes * USABLE_MEMORY_FRACTION, "B", dev.source("memory_bytes"))
    tim = _timing(ctx, lay, t)
    time = tim["time"]
    peak = dev.peak_flops(ctx.precision)
    steady = time - tim["overhead"]
    t.add("step_time", f"steady time {steady:.4g} s x global batch {ctx.batch_tokens:.4g} tokens / tokens",
          steady * ctx.batch_tokens / ctx.tokens, "s")
    t.add("tokens_per_s", "tokens / steady time (no evaluations, checkpoints, restarts)", ctx.tokens / steady,
          "tokens/s")
    # MFU is a property of the step loop (PaLM, arXiv:2204.02311, appendix B): steady-state time.
    mfu = t.add("mfu", f"flops / (steady time x {n} x peak {peak:.4g})", tim["flops"] / (steady * n * peak), "")
    dh = t.add("device_hours", f"time x {n} / 3600", time * n / 3600, "h")
    energy, co2 = energy_terms(t, dev, dh, ctx.pri.power_fraction, pue, grid, power_w)
    rate = price if price is not None else dev.price_per_hour
    cost = None
    if rate is not None:
        cost = t.add("cost", f"device_hours x ${rate}/device-hour", dh * rate, "USD",
                     "user price" if price is not None else dev.source("price_per_hour"))
    t.add("framework", f"{ctx.stack.name}: element-wise traffic x {ctx.stack.elementwise:g}, tp traffic hidden "
          f"{ctx.stack.tp_overlap:.0%}", ctx.stack.elementwise, "", ctx.stack.source)
    biggest = _max_micro_batch(ctx, lay)
    t.add("max_micro_batch", f"largest power-of-two micro-batch whose memory fits this layout", biggest, "sequences")
    notes = [f"layout: {lay.describe()}", f"largest micro-batch that fits: {biggest} sequences per device",
             f"framework: {ctx.stack.id}" + (
        "" if ctx.user_stack else f" (assumed: the usual one for {dev.kind}; pass --framework to change)")]
    if ctx.padding:
        notes.append(ctx.padding)
        t.add("head_padding", ctx.padding + " (assumed in training as in NxD Inference: the same neuronx-distributed "
              "parallel layers)", ctx.model.spec.n_heads, "heads", PAD_SOURCE)
    smallest = None
    if not fits and fixed is not None:
        smallest = _smallest_fitting(ctx, fixed)
        notes.append(f"does not fit in {dev.memory_bytes / 1e9:.0f} GB per device; smallest that fits: "
                     f"{smallest or 'none up to 1M devices'}")
    notes += missing_figure_notes(dev.id, rate, energy)
    return TrainingEstimate(
        model=ctx.model.name, hardware=dev.id, devices=n, precision=ctx.precision, tokens=ctx.tokens,
        seq_len=ctx.seq_len, global_batch=int(ctx.batch_tokens / ctx.seq_len), layout=lay, fits=fits,
        flops=tim["flops"], memory=mem, time_s=time, compute_time_s=tim["compute"], comm_time_s=tim["comm"],
        bubble_time_s=tim["bubble"], overhead_time_s=tim["overhead"], mfu=mfu, energy_kwh=energy, co2_kg=co2,
        cost_usd=cost, smallest_fitting=smallest, terms=list(t), notes=notes, framework=ctx.stack.id,
        max_micro_batch=biggest)
