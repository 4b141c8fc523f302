"""Inference estimates: time to first token, time per output token, memory, energy and cost.

Prefill is compute-bound: FLOPs at a fraction of peak, but never faster than reading the
weights once. Decode is bandwidth-bound: each step reads the (active) weights and the KV cache
of every sequence in the batch, at a fraction of bandwidth, but never faster than its FLOPs.
Both pay a fixed cost per layer (kernel launches) and, under tensor parallelism, two
all-reduces per layer (Megatron layout, Shoeybi et al. 2019, arXiv:1909.08053).

On a GPU without CUDA graphs (``graphs=False``: eager PyTorch, hwlm's own ``bench infer``) the host
also has to issue every op of a forward step, one by one (:func:`~hwlm.plan.efficiency.ops_per_forward`
x ``infer_op_overhead_s``). The host runs ahead of the GPU, so a step takes the longer of the two:
a small model decodes at the host's pace (gpt2-124m on an H200: ~2.8 ms per token at any batch),
a large one at the memory's. Under CUDA graphs (gpt-fast, vLLM) one replay issues the whole step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from hwlm.calibration import compute_dtype
from hwlm.errors import PlanError
from hwlm.formulas import (WEIGHT_BYTES, attention_flops_per_pair, forward_flops_per_token, kv_cache_bytes_per_token,
                           lm_head_flops_per_token)
from hwlm.plan.catalog import Device
from hwlm.plan.collectives import allreduce_time, library_for
from hwlm.plan.experts import EP_SOURCE, check_ep, ep_comm, moe_parts, weights_per_device, weights_read_per_step
from hwlm.plan.efficiency import (ACHIEVABLE_SOURCE, GRID_SOURCE, MXU_SOURCE, shape_efficiency,
                                  INFER_OP_OVERHEAD_SOURCE, PUE_SOURCE, Priors, load_calibration, ops_per_forward,
                                  priors_for)
from hwlm.plan.explain import Term, Terms
from hwlm.plan.jobs import INFER_PRECISIONS, InferenceJob, missing_figure_notes, resolve_hardware
from hwlm.plan.kv_cache import KVDtype, kv_cache_dtype
from hwlm.plan.models import PAD_SOURCE, PADS_HEADS, Model, get_model, pad_heads
from hwlm.plan.parallel import USABLE_MEMORY_FRACTION, link_bandwidth
from hwlm.plan.software import ENGINES, Stack, default_engine, get_engine

__all__ = ["InferenceEstimate", "InferenceJob", "estimate_inference", "INFER_PRECISIONS", "WEIGHT_BYTES",
           "kv_read_factor"]

# The weight-only kernels' decode-efficiency prior (Priors.int8_decode / int4_decode).
_WEIGHT_ONLY = {"w8a16": "int8", "w4a16": "int4"}


@dataclass
class InferenceEstimate:
    """The prediction for serving one batch. Times in seconds, memory in bytes."""

    model: str
    hardware: str
    devices: int
    tp: int
    precision: str
    batch: int
    prompt_len: int
    gen_len: int
    fits: bool
    graphs: bool
    engine: str
    ttft_s: float
    tpot_s: float
    memory_per_device_bytes: float
    weights_bytes_per_device: float
    kv_cache_bytes_per_device: float
    max_batch: int
    max_context: int
    throughput_tokens_per_s: float
    energy_per_token_j: float | None
    cost_per_million_tokens_usd: float | None
    ep: int = 1
    terms: list[Term] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_joule(self) -> float | None:
        return None if not self.energy_per_token_j else 1.0 / self.energy_per_token_j

    @property
    def request_time_s(self) -> float:
        return self.ttft_s + max(self.gen_len - 1, 0) * self.tpot_s

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (
            "model", "hardware", "devices", "tp", "ep", "precision", "batch", "prompt_len", "gen_len", "fits", "graphs", "engine", "ttft_s",
            "tpot_s", "memory_per_device_bytes", "weights_bytes_per_device", "kv_cache_bytes_per_device", "max_batch",
            "max_context", "throughput_tokens_per_s", "energy_per_token_j", "cost_per_million_tokens_usd",
            "request_time_s", "tokens_per_joule", "notes")}
        d["decode_tokens_per_s"] = self.batch / self.tpot_s
        d["terms"] = [t.to_dict() for t in self.terms]
        return {"kind": "hwlm-plan-infer", **d}


def _compute_dtype(dev: Device, precision: str) -> str:
    """The data type the matrix units run ``precision`` in (``hwlm.calibration.compute_dtype``: the calibration
    divides a format's prefill rate by that data type's peak), else the device's widest."""
    return compute_dtype(precision, dev.flops) or (dev.dtypes[-1] if "fp32" not in dev.flops else "fp32")


def _weights_read_per_step(m: Model, batch: int, bytes_w: float) -> tuple[float, str]:
    """Bytes of weights one decode step reads on one unsharded replica; MoE reads only the experts some token
    picked (:func:`hwlm.plan.experts.weights_read_per_step`)."""
    return weights_read_per_step(m, batch, bytes_w)


def _resolve(dev: Device, cdtype: str, precision: str, calibration: Any) -> tuple[Priors, str, str, float | None]:
    """Priors with calibrated efficiencies, their sources, and the element-wise bandwidth efficiency.

    The last is None when a ``prefill`` entry is calibrated: that end-to-end rate already includes the
    element-wise work. Otherwise it is the copy (``membw``) efficiency, never a ``decode`` one (a decode
    rate can be bound by something else than bandwidth, e.g. kernel launches)."""
    maf = dev.achievable_flops(cdtype)
    pri = priors_for(dev.kind, cdtype, dev.peak_flops(cdtype), dev.memory_bw, weight_dtype=_WEIGHT_ONLY.get(precision),
                     achievable=maf, balance_penalty=dev.balance_penalty(cdtype))
    src = f"prior for {dev.kind}/{cdtype}: {pri.source}" + (
        f"; x achievable {maf:.4g} / peak ({ACHIEVABLE_SOURCE}; {dev.source('achievable')})" if maf else "") + (
        "" if dev.balance_penalty(cdtype) else f"; no balance penalty ({dev.source('no_balance_penalty')})")
    cal = load_calibration(calibration)
    if cal is None:
        return pri, src, src, pri.decode_bw_eff
    copy = cal.lookup(dev.id, cdtype, "membw") or cal.lookup(dev.id, "bf16", "membw")
    ew_eff = copy.efficiency if copy else pri.decode_bw_eff
    # A compressed format's own entries (dtype "w4a16", ... as the compress stage names them) come first.
    fmt = precision if precision != cdtype else None
    mm = (fmt and cal.lookup(dev.id, fmt, "prefill")) or cal.lookup(dev.id, cdtype, "prefill") \
        or cal.lookup(dev.id, cdtype, "matmul")
    own = fmt and cal.lookup(dev.id, fmt, "decode")
    bw = own or cal.lookup(dev.id, cdtype, "decode") or cal.lookup(dev.id, cdtype, "membw") \
        or cal.lookup(dev.id, "bf16", "decode") or cal.lookup(dev.id, "bf16", "membw")
    if mm:
        pri = replace(pri, matmul_eff=mm.efficiency)
    if bw:
        # A 16-bit rate stands in for a weight-only format with the prior's kernel factor kept
        # (dequantisation in the kernel: Priors.int8_decode / int4_decode).
        factor = 1.0 if own or precision not in _WEIGHT_ONLY else pri.decode_bw_eff / priors_for(
            dev.kind, cdtype, dev.peak_flops(cdtype), dev.memory_bw, achievable=maf,
            balance_penalty=dev.balance_penalty(cdtype)).decode_bw_eff
        pri = replace(pri, decode_bw_eff=bw.efficiency * factor)
    return (pri, f"calibration {mm.phase} {mm.efficiency} ({mm.source})" if mm else src,
            f"calibration {bw.phase} {bw.efficiency} ({bw.source})" if bw else src,
            None if mm and mm.phase == "prefill" else ew_eff)


def _check(m: Model, dev: Device, devices: int, tp: int, batch: int, prompt_len: int, gen_len: int,
           precision: str) -> None:
    if precision not in INFER_PRECISIONS:
        raise PlanError(f"inference precision {precision!r} is not supported; choose one of {', '.join(INFER_PRECISIONS)}")
    for name, v, lo in (("--devices", devices, 1), ("--batch", batch, 1), ("--prompt-len", prompt_len, 1),
                        ("--gen-len", gen_len, 1), ("--tp", tp, 1)):
        if not isinstance(v, int) or v < lo:
            raise PlanError(f"{name} must be a whole number >= {lo}, got {v!r}")
    if devices % tp:
        raise PlanError(f"tp={tp} does not divide --devices {devices}; the other devices serve replicas, "
                        f"so choose tp dividing {devices}")
    if m.spec.n_heads % tp and dev.vendor not in PADS_HEADS:
        raise PlanError(f"tp={tp} does not divide the {m.spec.n_heads} attention heads of {m.name}; "
                        f"choose a divisor of {m.spec.n_heads}")


def _kv_per_token_device(m: Model, tp: int, kv_bytes: float) -> tuple[float, str]:
    spec = m.spec
    full = kv_cache_bytes_per_token(spec, kv_bytes)
    if spec.kv_lora_rank > 0:  # the MLA latent is shared by all heads: every tp rank keeps it whole
        return full, "MLA latent, replicated on each tp rank"
    heads_here = math.ceil(spec.kv_heads / tp)  # fewer KV heads than tp ranks: heads are replicated
    return full * heads_here / spec.kv_heads, f"{heads_here} of {spec.kv_heads} KV heads per device"


def kv_read_factor(m: Model, engine: Stack) -> tuple[float, str]:
    """How many times a decode step reads each KV-cache byte: the query heads per KV head when the engine's
    decode kernel runs one block per query head (``Stack.kv_per_query_head``), else once."""
    spec = m.spec
    if not engine.kv_per_query_head or spec.kv_lora_rank > 0 or spec.kv_heads >= spec.n_heads:
        return 1.0, ""
    g = spec.n_heads / spec.kv_heads
    return g, f" x {g:g} ({engine.id}: K/V read once per query head, {spec.n_heads} query / {spec.kv_heads} KV heads)"


def _comm(m: Model, dev: Device, tp: int, tokens: int, pri: Priors) -> tuple[float, str]:
    """Two all-reduces per layer of ``tokens x hidden`` 16-bit activations over the tp group, each costed by
    the collective library's latency model on the device's fabric (:mod:`hwlm.plan.collectives`)."""
    if tp == 1:
        return 0.0, ""
    if dev.kind == "cpu":  # shared-memory all-reduce: the prior's latency, the link's bandwidth
        bw, what = link_bandwidth(dev.intra_node_bw, dev.inter_node_bw, tp, dev.scale_up_devices)
        per = pri.allreduce_latency_s + 2 * (tp - 1) / tp * tokens * m.spec.d_model * 2.0 / (bw * pri.comm_eff)
        return 2 * m.spec.n_layers * per, f"2 x {m.spec.n_layers} layers x ({pri.allreduce_latency_s * 1e6:.3g} us " \
            f"+ 2(t-1)/t x {tokens} tok x {m.spec.d_model} x 2 B / ({what} {bw:.4g} x {pri.comm_eff}))"
    per, formula = allreduce_time(dev, tp, tokens * m.spec.d_model * 2.0, pri.comm_eff)
    return 2 * m.spec.n_layers * per, f"2 x {m.spec.n_layers} layers x all-reduce of {tokens} tok x " \
        f"{m.spec.d_model} x 2 B: {formula}"


COMM_SOURCE = "Megatron TP: 2 all-reduces per layer, arXiv:1909.08053; latency: "


@dataclass(frozen=True)
class _Job:
    m: Model
    dev: Device
    devices: int
    tp: int
    batch: int
    prompt_len: int
    gen_len: int
    precision: str
    cdtype: str
    pri: Priors
    mm_src: str
    bw_src: str
    graphs: bool = False
    ew_bw_eff: float | None = None  # element-wise traffic's bandwidth efficiency; None: in a calibrated prefill
    engine: Stack = ENGINES["hwlm"]
    ep: int = 1  # expert-parallel groups of tp devices (attention data-parallel over them)

    @property
    def width(self) -> int:
        """Devices of one replica: tp x ep."""
        return self.tp * self.ep

    @property
    def group_batch(self) -> float:
        """Sequences one attention group (tp devices) runs: the batch spread over the ep groups."""
        return self.batch / self.ep


def _host_time(j: _Job, t: Terms, phase: str) -> float:
    """Seconds the host needs to issue one eager forward step (0 under CUDA graphs or off a GPU).

    A CPU runs its ops itself (``layer_overhead_s`` covers their fixed cost); a TPU runs compiled XLA."""
    if j.graphs or j.dev.kind != "gpu":
        return 0.0
    # Under tensor parallelism an eager step also launches its 2 all-reduces per layer one by one.
    n_moe = moe_parts(j.m)[2] if j.ep > 1 else 0
    ops = ops_per_forward(j.m.spec) + (2 * j.m.spec.n_layers if j.tp > 1 else 0) + 2 * n_moe
    return t.add(f"{phase}_host_time", f"{ops:.0f} ops per eager forward"
                 + (" (2 all-reduces per layer included)" if j.tp > 1 else "")
                 + (" (2 all-to-alls per MoE layer included)" if n_moe else "") + f" x {j.pri.infer_op_overhead_s:g} s",
                 ops * j.pri.infer_op_overhead_s, "s", INFER_OP_OVERHEAD_SOURCE)


def _memory(j: _Job, t: Terms, kvd: KVDtype) -> dict[str, float]:
    spec, tp, batch = j.m.spec, j.tp, j.batch
    bytes_w = WEIGHT_BYTES[j.precision]
    kv_bytes = t.add("kv_elem_bytes", kvd.why, kvd.bytes, "B", kvd.source)  # what the engine stores (plan.kv_cache)
    w_dev = t.add("weights_per_device", f"{j.m.params.total:.4g} params x {bytes_w} B / tp {tp}" if j.ep == 1 else
                  f"(dense / tp {tp} + routed experts / (tp {tp} x ep {j.ep})) x {bytes_w} B",
                  weights_per_device(j.m, bytes_w, tp, j.ep), "B", j.m.source)
    kv_tok, kv_what = _kv_per_token_device(j.m, tp, kv_bytes)
    kv_tok = t.add("kv_bytes_per_token_device", f"kv_cache_bytes_per_token at {kv_bytes:g} B/elem, {kv_what}", kv_tok,
                   "B", "hwlm.formulas.kv_cache_bytes_per_token (GQA: n_kv_heads, MLA: latent)")
    ctx_end = j.prompt_len + j.gen_len
    per_group = math.ceil(batch / j.ep)  # sequences on one attention group (all of them without ep)
    kv = t.add("kv_cache_per_device", f"batch {per_group} x {ctx_end} tokens x {kv_tok:.4g} B"
               + (f" (batch {batch} over ep {j.ep} attention groups)" if j.ep > 1 else ""),
               per_group * ctx_end * kv_tok, "B")
    chunk = min(j.prompt_len, 2048) * per_group  # chunked prefill keeps one chunk's activations alive
    ws = t.add("workspace", f"{chunk} prefill tokens x (4h + 3 d_ff/tp) x 2 B + fp32 logits",
               chunk * (4 * spec.d_model + 3 * spec.ff / tp) * 2.0 + per_group * spec.vocab_size * 4.0, "B",
               "assumed: vLLM-style chunked prefill of 2048 tokens")
    mem = t.add("memory_per_device", "weights + kv_cache + workspace", w_dev + kv + ws, "B")
    free = j.dev.memory_bytes * USABLE_MEMORY_FRACTION - w_dev - ws
    return {"weights": w_dev, "kv_tok": kv_tok, "kv": kv, "total": mem, "bytes_w": bytes_w,
            "max_batch": j.ep * max(0, int(free // (ctx_end * kv_tok))) if free > 0 else 0,
            "max_context": max(0, int(free // (per_group * kv_tok))) if free > 0 else 0}


def _devs(j: _Job) -> str:
    return f"tp {j.tp}" if j.ep == 1 else f"tp {j.tp} x ep {j.ep}"


def _prefill(j: _Job, t: Terms, w_dev: float) -> float:
    spec, pri, dev, tp = j.m.spec, j.pri, j.dev, j.tp
    peak, bw = dev.peak_flops(j.cdtype), dev.memory_bw
    f_pre = t.add("prefill_flops", f"batch {j.batch} x prompt {j.prompt_len} x forward FLOPs/token at {j.prompt_len}",
                  j.batch * j.prompt_len * forward_flops_per_token(spec, j.prompt_len), "FLOP", "hwlm.formulas")
    if j.engine.last_token_logits and j.prompt_len > 1:
        # The output layer runs on the last prompt token of each sequence only.
        f_pre -= t.add("prefill_logits_skipped", f"batch {j.batch} x (prompt - 1) x 2 x vocab x d_model "
                       f"({j.engine.id}: logits at the last prompt token only)",
                       j.batch * (j.prompt_len - 1) * lm_head_flops_per_token(spec), "FLOP", j.engine.source)
    # Prefill's own regime: the attention-score FLOPs grow with the prompt (quadratic in total) and run in
    # the engine's attention kernel, the projections in plain GEMMs.
    f_att = t.add("prefill_attention_flops", f"batch x prompt x {spec.n_layers} layers x 2 x prompt x heads x "
                  "(qk + v) head dims", j.batch * j.prompt_len * (forward_flops_per_token(spec, j.prompt_len)
                                                                   - 2.0 * j.m.params.matmul_active), "FLOP",
                  "hwlm.formulas.forward_flops_per_token (full T x T product, PaLM convention)")
    att = j.engine.attention
    fill, fill_text = shape_efficiency(dev, spec, j.prompt_len, j.prompt_len, tp)
    if fill < 1.0:
        t.add("prefill_mxu_fill", fill_text, fill, "", MXU_SOURCE)
    w = j.width  # the replica's FLOPs and activations spread over tp x ep devices
    t_mm = t.add("prefill_compute_time", f"(prefill_flops - attention + attention / {att:g} ({j.engine.id} kernel)) "
                 f"/ ({_devs(j)} x peak {peak:.4g} x {pri.matmul_eff:.3g}"
                 + (f" x MXU fill {fill:.3f})" if fill < 1 else ")"),
                 (f_pre - f_att + f_att / att) / (w * peak * pri.matmul_eff * fill), "s",
                 f"{j.mm_src}; attention kernel: {j.engine.source}")
    if j.ew_bw_eff is None:
        t_ew = t.add("prefill_elementwise_time", "0: included in the calibrated prefill rate", 0.0, "s", j.mm_src)
    else:
        t_ew = t.add("prefill_elementwise_time",
                     f"tokens x {spec.n_layers} layers x {pri.act_traffic:.3g} x {j.engine.elementwise:g} x 34h x 2 B "
                     f"/ ({_devs(j)} x bw x {j.ew_bw_eff:.3g})",
                     j.batch * j.prompt_len * spec.n_layers * pri.act_traffic * j.engine.elementwise * 34 * spec.d_model
                     * 2.0 / (w * bw * j.ew_bw_eff), "s",
                     f"Korthikanti et al. 2022, arXiv:2205.05198; x {j.engine.elementwise:g} fusion of {j.engine.id}")
    t_w = t.add("prefill_weight_read_time", f"weights_per_device / (bw {bw:.4g} x {pri.decode_bw_eff:.3g})",
                w_dev / (bw * pri.decode_bw_eff), "s", j.bw_src)
    comm, comm_f = _comm(j.m, dev, tp, j.group_batch * j.prompt_len, pri)
    if comm:
        t.add("prefill_tp_comm_time", comm_f, comm, "s", COMM_SOURCE + library_for(dev).source)
    a2a, a2a_f = ep_comm(j.m, dev, tp, j.ep, j.group_batch * j.prompt_len, pri.comm_eff)
    if a2a:
        comm += t.add("prefill_ep_all_to_all_time", a2a_f, a2a, "s", EP_SOURCE + "; " + library_for(dev).source)
    launch = spec.n_layers * pri.layer_overhead_s
    host = _host_time(j, t, "prefill")
    return t.add("ttft", f"max(max(compute + elementwise, weight read) + {spec.n_layers} x {pri.layer_overhead_s:g} s"
                 " + tp comm, host time)", max(max(t_mm + t_ew, t_w) + launch + comm, host), "s", pri.source)


PER_KERNEL_SOURCE = ("per-kernel roofline: each kernel is bound by its own FLOPs or bytes (Williams, Waterman and "
                     "Patterson, 'Roofline: An Insightful Visual Performance Model for Multicore Architectures', CACM "
                     "52(4), 2009) and a step's kernels run one after another, so the step "
                     "is their sum: LLM-Viewer (Yuan et al. 2024, arXiv:2402.16363) model_analyzer.py gives every "
                     "projection, qk_matmul and sv_matmul its own roofline_analyze(bandwidth, max_OPS, OPs, "
                     "memory_access) and adds their inference_time over the layers")


def _decode(j: _Job, t: Terms, kv_tok: float, bytes_w: float) -> float:
    """One decode step: the weight products and the attention over the KV cache are separate kernels, each
    bound by its own FLOPs or bytes, run one after the other (:data:`PER_KERNEL_SOURCE`). At a large batch the
    products are compute-bound while the attention, a few FLOPs per cached byte, stays bandwidth-bound, so
    the step is the sum of the two, not the larger of the step's totals. A calibrated decode rate (bytes per
    step / measured TPOT) already holds that sum: it keeps the larger of the totals."""
    spec, pri, dev, tp = j.m.spec, j.pri, j.dev, j.tp
    peak, bw = dev.peak_flops(j.cdtype), dev.memory_bw
    ctx_avg = j.prompt_len + j.gen_len / 2  # average context over the generation
    w_read, w_what = weights_read_per_step(j.m, j.batch, bytes_w, tp, j.ep)
    reads, reads_f = kv_read_factor(j.m, j.engine)
    kv_read = j.group_batch * ctx_avg * kv_tok * reads
    step = t.add("decode_bytes_per_step", f"weights read ({w_what}) + batch {j.group_batch:g} x {ctx_avg:g} ctx x kv "
                 "per token" + reads_f, w_read + kv_read, "B", j.engine.source if reads > 1 else "")
    eff_bw = bw * pri.decode_bw_eff
    t_mem = t.add("decode_memory_time", f"{step:.4g} B / (bw {bw:.4g} x {pri.decode_bw_eff:.3g})",
                  step / eff_bw, "s", f"{dev.source('memory_bw')}; {j.bw_src}")
    f_dec = j.batch * forward_flops_per_token(spec, int(ctx_avg))
    f_att = j.batch * int(ctx_avg) * attention_flops_per_pair(spec)
    fill, _ = shape_efficiency(dev, spec, j.batch, 1, tp)
    rate = j.width * peak * pri.matmul_eff * fill
    t_fl = t.add("decode_compute_time", f"{f_dec:.4g} FLOP / ({_devs(j)} x peak {peak:.4g} x {pri.matmul_eff:.3g}"
                 + (f" x MXU fill {fill:.3f})" if fill < 1 else ")"), f_dec / rate, "s",
                 j.mm_src + ("; " + MXU_SOURCE if fill < 1 else ""))
    calibrated = j.bw_src.startswith("calibration decode")
    if calibrated:
        # A measured decode rate (bench infer's bytes per step / TPOT) already holds the per-layer fixed cost.
        launch = t.add("layer_overhead", "0: inside the calibrated decode rate", 0.0, "s", j.bw_src)
        t_step = max(t_mem, t_fl)
    else:
        t_lin = t.add("decode_linear_time", f"max(weights {w_read:.4g} B / bw, {f_dec - f_att:.4g} FLOP / compute)",
                      max(w_read / eff_bw, (f_dec - f_att) / rate), "s", PER_KERNEL_SOURCE)
        t_att = t.add("decode_attention_time", f"max(KV cache {kv_read:.4g} B / bw, {f_att:.4g} FLOP / compute)",
                      max(kv_read / eff_bw, f_att / rate), "s", PER_KERNEL_SOURCE)
        t_step = t_lin + t_att
        launch = t.add("layer_overhead", f"{spec.n_layers} layers x {pri.layer_overhead_s:g} s",
                       spec.n_layers * pri.layer_overhead_s, "s", pri.source)
    comm, comm_f = _comm(j.m, dev, tp, math.ceil(j.group_batch), pri)
    if comm:
        t.add("decode_tp_comm_time", comm_f, comm, "s", COMM_SOURCE + library_for(dev).source)
    a2a, a2a_f = ep_comm(j.m, dev, tp, j.ep, j.group_batch, pri.comm_eff)
    if a2a:
        comm += t.add("decode_ep_all_to_all_time", a2a_f, a2a, "s", EP_SOURCE + "; " + library_for(dev).source)
    host = _host_time(j, t, "decode")
    step_f = "max(decode_memory_time, decode_compute_time)" if calibrated else \
        "decode_linear_time + decode_attention_time"
    return t.add("tpot", f"max({step_f} + layer_overhead + tp comm, host time)",
                 max(t_step + launch + comm, host), "s")


def estimate_inference(model: str | Model | InferenceJob, hardware: str | Device | None = None, devices: int = 1, *,
                       graphs: bool | None = None, **options: Any) -> InferenceEstimate:
    """Predict serving one batch: ``estimate_inference(InferenceJob(...))``, or the job's fields as arguments
    (``estimate_inference("llama-2-7b", "a100-80gb", 1, batch=8, prompt_len=1024)``); see
    :class:`~hwlm.plan.jobs.InferenceJob` for every field.

    ``tp`` (default: all devices) shards each replica; ``devices / tp`` replicas each serve ``batch``.
    ``power_w`` replaces the catalog TDP (per device). ``graphs`` (old spelling of ``cuda_graphs``):
    the server replays each step as a CUDA graph (gpt-fast, vLLM, TensorRT-LLM), so a GPU does not wait
    for the host to issue its ops; the default is eager PyTorch, as ``hwlm bench infer`` runs.
    """
    if isinstance(model, InferenceJob):
        if hardware is not None or options or graphs is not None:
            raise PlanError("pass either an InferenceJob or the job's fields as arguments, not both")
        job = model
    else:
        if graphs is not None:
            options["cuda_graphs"] = graphs
        job = InferenceJob(model=model, hardware=hardware, devices=devices, **options)
    return _estimate(job)


def _context_check(m: Model, prompt_len: int, gen_len: int, allow: bool) -> str | None:
    """Refuse a request past the model's context window unless allowed; then a note that it extrapolates."""
    window = m.spec.max_positions
    if prompt_len + gen_len <= window:
        return None
    if not allow:
        raise PlanError(f"prompt {prompt_len:,} + generation {gen_len:,} tokens exceed {m.name}'s "
                        f"{window:,}-token context; shorten them, or pass --allow-beyond-context to extrapolate")
    return (f"prompt + generation ({prompt_len + gen_len:,} tokens) go past {m.name}'s {window:,}-token context: "
            "the estimate extrapolates the attention and KV-cache terms; the model itself was not trained for it")


def _estimate(job: InferenceJob) -> InferenceEstimate:
    m = get_model(job.model)
    dev = resolve_hardware(job.hardware, job.calibration)
    devices, batch, prompt_len, gen_len, precision = job.devices, job.batch, job.prompt_len, job.gen_len, job.precision
    ep = 1 if job.ep is None else job.ep
    tp = devices // ep if job.tp is None else job.tp
    check_ep(m, devices, tp, ep)
    _check(m, dev, devices, tp, batch, prompt_len, gen_len, precision)
    beyond = _context_check(m, prompt_len, gen_len, job.allow_beyond_context)
    m, padding = pad_heads(m, tp)
    engine = get_engine(job.engine, dev) if job.engine else default_engine(dev)
    # CUDA graphs belong to the engine; --cuda-graphs / graphs= overrides it.
    graphs = engine.cuda_graphs if job.cuda_graphs is None else bool(job.cuda_graphs)
    calibration, pue, grid_intensity = job.calibration, job.pue, job.grid_intensity
    price_per_hour, power_w = job.price_per_hour, job.power_w
    cdtype = _compute_dtype(dev, precision)
    pri, mm_src, bw_src, ew_eff = _resolve(dev, cdtype, precision, calibration)
    j = _Job(m, dev, devices, tp, batch, prompt_len, gen_len, precision, cdtype, pri, mm_src, bw_src, bool(graphs),
             ew_eff, engine, ep)
    t = Terms()
    mem = _memory(j, t, kv_cache_dtype(precision, engine, dev, calibration))
    ttft = _prefill(j, t, mem["weights"])
    tpot = _decode(j, t, mem["kv_tok"], mem["bytes_w"])
    replicas = devices // (tp * ep)
    req = t.add("request_time", f"ttft + (gen {gen_len} - 1) x tpot", ttft + (gen_len - 1) * tpot, "s")
    thr = t.add("throughput", f"{replicas} replicas x batch {batch} x gen {gen_len} / request_time",
                replicas * batch * gen_len / req, "tokens/s")
    ept = None
    if power_w is not None or dev.tdp_w is not None:
        power = power_w if power_w is not None else pri.power_fraction * dev.tdp_w  # type: ignore[operator]
        ept = t.add("energy_per_token", f"{devices} x {power:g} W x PUE {pue} / throughput",
                    devices * power * pue / thr, "J",
                    f"{'user power' if power_w is not None else dev.source('tdp_w')}; {PUE_SOURCE}")
        t.add("co2_per_million_tokens", f"energy_per_token x 1e6 / 3.6e6 x {grid_intensity} kg/kWh",
              ept * 1e6 / 3.6e6 * grid_intensity, "kg", GRID_SOURCE)
    rate = price_per_hour if price_per_hour is not None else dev.price_per_hour
    cpm = None
    if rate is not None:
        cpm = t.add("cost_per_million_tokens", f"{devices} x ${rate}/h / 3600 / throughput x 1e6",
                    devices * rate / 3600 / thr * 1e6, "USD",
                    "user price" if price_per_hour is not None else dev.source("price_per_hour"))
    fits = mem["total"] <= dev.memory_bytes * USABLE_MEMORY_FRACTION
    t.add("engine", f"{engine.name}: CUDA graphs {'on' if graphs else 'off'}, element-wise traffic x "
          f"{engine.elementwise:g}, attention efficiency x {engine.attention:g}", engine.elementwise, "", engine.source)
    notes = [f"engine: {engine.id}" + ("" if job.engine else " (assumed; pass --engine vllm|tensorrt-llm|gpt-fast|"
                                                             "llama.cpp|optimum-habana|hf|hwlm)"),
             f"compute in {cdtype}; weights in {precision}"
             + ("; GPU steps issued eagerly, op by op (pass graphs / --cuda-graphs for a CUDA-graph server)"
                if dev.kind == "gpu" and not graphs else "")]
    if beyond:
        notes.append(beyond)
    if padding:
        notes.append(padding)
        t.add("head_padding", padding, m.spec.n_heads, "heads", PAD_SOURCE)
    if not fits:
        notes.append(f"does not fit: {mem['total'] / 1e9:.1f} GB per device > {USABLE_MEMORY_FRACTION:.0%} of "
                     f"{dev.memory_bytes / 1e9:.0f} GB; largest batch that fits: {mem['max_batch']}; "
                     "use more devices (tp) or a narrower precision")
    notes += missing_figure_notes(dev.id, rate, ept)
    return InferenceEstimate(
        model=m.name, hardware=dev.id, devices=devices, tp=tp, ep=ep, precision=precision, batch=batch, prompt_len=prompt_len,
        gen_len=gen_len, fits=fits, graphs=bool(graphs), engine=engine.id, ttft_s=ttft, tpot_s=tpot, memory_per_device_bytes=mem["total"],
        weights_bytes_per_device=mem["weights"], kv_cache_bytes_per_device=mem["kv"], max_batch=mem["max_batch"],
        max_context=mem["max_context"], throughput_tokens_per_s=thr, energy_per_token_j=ept,
        cost_per_million_tokens_usd=cpm, terms=list(t), notes=notes)
