"""One engine step of continuous batching, priced: the step model :mod:`hwlm.plan.serving` simulates with.

A step is one forward over B decode rows and the step's prompt chunks (p tokens, R = B + chunks rows),
priced by the same roofline as :mod:`hwlm.plan.inference`:

    GPU:  step = max((weights read + KV read) / (bw x eff(rows)), FLOPs / (peak x eff) + element-wise)
                 + layers x per-layer overhead + tensor-parallel all-reduces  [+ host issue time if eager]
    CPU:  step = (weights read + KV read) / (bw x eff) + FLOPs / (peak x eff) + element-wise + ...

    FLOPs = 2 x matmul weights x (B + p) - output layer x (B + p - R)   [logits at each row's last token]
            + attention_flops_per_pair x pairs

A CPU core runs one kernel at a time, so there the terms add (as in :mod:`hwlm.plan.training`). With a
calibration, measured steps replace the priors (``hwlm bench calibrate``, :mod:`hwlm.calibration`):

* **decode rows, on a curve.** A ``decode_rows`` curve holds ``hwlm bench infer``'s whole decode step at
  1, 2, 4, ... rows, as bytes streamed per second: one row runs matrix-vector products, two rows or more
  matrix products, whose small-row kernels stream the weights more slowly on a CPU (mid on 2 EPYC cores:
  15 ms a step at one row, 26 ms at two to four). A step of B decode rows is priced at the curve's
  efficiency at B (log-linear between the measured rows); rows beyond the curve's last point add their
  products and element-wise passes. Without the curve the one ``decode`` rate (batch 1's) holds one row,
  and every other row adds its products, as before.
* **prompt tokens.** A measured ``prefill`` rate (FLOP/s of a whole prompt forward, at ``prefill_rows``
  tokens on a curve where there is one) holds the prompt's products, element-wise passes and its weight
  stream; riding in a decode step, the weights are streamed once, by the decode rows.
* attention is priced on its own at the matmul rate: ``pairs`` is what the engine's kernel scores: each
  query's own context for a variable-length kernel (vLLM's FlashAttention), rows x most queries x longest
  context for hwlm's engine, whose packed step pads every row to one ``(R, H, T, L)`` attention with a
  mask (the KV bytes read follow the same rule).

Mixture-of-experts models read the experts the step's tokens touch (:mod:`hwlm.plan.experts`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from hwlm.calibration import THIS_MACHINE
from hwlm.formulas import WEIGHT_BYTES, attention_flops_per_pair, lm_head_flops_per_token
from hwlm.plan.catalog import Device
from hwlm.plan.efficiency import load_calibration, ops_per_forward, shape_efficiency
from hwlm.plan.experts import ep_comm, moe_parts, weights_read_per_step
from hwlm.plan.inference import _comm, _compute_dtype, _kv_per_token_device, _resolve, kv_read_factor
from hwlm.plan.jobs import ServingJob
from hwlm.plan.kv_cache import kv_cache_dtype
from hwlm.plan.models import Model
from hwlm.plan.software import Stack

__all__ = ["StepModel", "step_model", "curve_at", "rows_curve"]

Curve = tuple[tuple[int, float], ...]  # ((rows, efficiency), ...) by rows


def curve_at(curve: Curve, rows: float) -> float:
    """The efficiency at ``rows``, log-linear between the measured points, the end points beyond them.

    >>> curve_at(((1, 0.30), (4, 0.10)), 2), curve_at(((1, 0.30), (4, 0.10)), 64)
    (0.2, 0.1)
    """
    xs = [r for r, _ in curve]
    i = bisect.bisect_left(xs, rows)
    if i == 0:
        return curve[0][1]
    if i == len(xs):
        return curve[-1][1]
    (r0, e0), (r1, e1) = curve[i - 1], curve[i]
    a = math.log(rows / r0) / math.log(r1 / r0)
    return round(e0 + a * (e1 - e0), 12)


def rows_curve(calibration: Any, device_id: str, dtypes: Sequence[str], phase: str) -> Curve:
    """The calibration's ``phase`` curve (``decode_rows`` / ``prefill_rows``) for the first of ``dtypes``
    that has one (a compressed format's own first), the exact device before ``this-machine``; () if none."""
    cal = load_calibration(calibration)
    if cal is None:
        return ()
    for dtype in dtypes:
        for dev in (device_id, THIS_MACHINE):
            pts = {e.rows: e.efficiency for e in cal.entries
                   if e.phase == phase and e.dtype == dtype and e.device == dev and e.rows}
            if pts:
                return tuple(sorted(pts.items()))
    return ()


@dataclass(frozen=True)
class StepModel:
    """Seconds of one engine step as a function of what it runs (one replica of ``tp`` devices)."""

    m: Model
    dev: Device
    tp: int
    engine: Stack
    graphs: bool
    cdtype: str
    bytes_w: float
    kv_tok: float          # KV bytes per token per device
    mm_eff: float
    bw_eff: float
    ew_eff: float
    act_traffic: float
    layer_overhead_s: float
    host_s: float          # eager host time per step (0 under CUDA graphs / off GPUs)
    pri: Any
    ep: int = 1            # expert-parallel groups of tp devices (attention data-parallel over them)
    decode_calibrated: bool = False  # bw_eff is a measured batch-1 decode step (bench infer), not a prior
    prefill_calibrated: bool = False  # mm_eff is a measured prefill forward (its weights and element-wise in it)
    decode_curve: Curve = ()   # measured decode efficiency by rows (calibration decode_rows)
    prefill_curve: Curve = ()  # measured prefill efficiency by prompt tokens (calibration prefill_rows)
    fill: float = 1.0          # the matrix unit's fill by this model's shapes (mm_eff holds it already)
    copy_eff: float = 1.0      # copy bandwidth / memory_bw: how fast a prefill streams its weights
    # (weights read, collectives) by step tokens, and the constants under None: a simulation asks for the same
    # few token counts thousands of times
    _by_tokens: dict = field(default_factory=dict, compare=False, repr=False)

    def decode_eff(self, rows: float) -> float:
        """Bandwidth efficiency of a decode step of ``rows`` rows: the curve's where measured."""
        return curve_at(self.decode_curve, max(rows, 1.0)) if self.decode_curve else self.bw_eff

    def _constants(self) -> tuple[float, float, float, float, float, float]:
        """(KV reads per key, output-layer FLOPs per token, matmul FLOPs per token, attention FLOPs per scored
        pair, element-wise seconds per token, matmul FLOP/s of the replica): what no step changes."""
        got = self._by_tokens.get(None)
        if got is None:
            spec, w = self.m.spec, self.tp * self.ep
            reads, _ = kv_read_factor(self.m, self.engine)
            # the output layer runs on each row's last token only where the engine samples only there
            head = lm_head_flops_per_token(spec) if self.engine.last_token_logits else 0.0
            t_ew_tok = spec.n_layers * self.act_traffic * self.engine.elementwise * 34 * spec.d_model * 2.0 / (
                w * self.dev.memory_bw * self.ew_eff)
            got = self._by_tokens[None] = (
                reads, head, 2.0 * self.m.params.matmul_active, attention_flops_per_pair(spec) / self.engine.attention,
                t_ew_tok, w * self.dev.peak_flops(self.cdtype) * self.mm_eff)
        return got

    def _per_tokens(self, tokens: int) -> tuple[float, float]:
        """(weight bytes read, seconds of the tensor- and expert-parallel collectives) of a step of ``tokens``."""
        got = self._by_tokens.get(tokens)
        if got is None:
            w_read = weights_read_per_step(self.m, max(tokens, 1), self.bytes_w, self.tp, self.ep)[0]
            comm = _comm(self.m, self.dev, self.tp, math.ceil(tokens / self.ep), self.pri)[0] \
                + ep_comm(self.m, self.dev, self.tp, self.ep, tokens / self.ep, self.pri.comm_eff)[0]
            got = self._by_tokens[tokens] = (w_read, comm)
        return got

    def seconds(self, decode: int, ctx_sum: float, chunks: Sequence[tuple[int, float]] = (),
                max_ctx: float | None = None) -> float:
        """``decode`` rows of one new token each, whose contexts (that token included) sum to ``ctx_sum`` and
        reach ``max_ctx`` at the longest (default: their mean), plus prompt ``chunks`` of (tokens, start
        position), all in one forward; and the engine's own work around it (``Stack.step_host_s``)."""
        rows = decode + len(chunks)
        host = self.engine.step_host_s + self.engine.row_host_s * rows if rows else 0.0
        return self.forward_seconds(decode, ctx_sum, chunks, max_ctx) + host

    def forward_seconds(self, decode: int, ctx_sum: float, chunks: Sequence[tuple[int, float]] = (),
                        max_ctx: float | None = None) -> float:
        """The step's forward alone (see :meth:`seconds`)."""
        spec, w = self.m.spec, self.tp * self.ep
        p_tok = sum(n for n, _ in chunks)
        tokens, rows = decode + p_tok, decode + len(chunks)
        w_read, comm = self._per_tokens(tokens)
        reads, head, mm_tok, per_pair, t_ew_tok, peak = self._constants()
        if self.engine.padded_attention and rows > 1:
            # One (R, H, T, L) attention with a mask: every row is padded to the most queries of any row (T)
            # and reads and scores the keys [0, L) of the longest row (hwlm.serve.engine.ModelRunner.step).
            longest = max([(ctx_sum / decode if max_ctx is None else max_ctx) if decode else 0.0]
                          + [s + n for n, s in chunks])
            pairs = rows * max([1] + [n for n, _ in chunks]) * longest
            kv_read = rows * longest * reads
        else:  # a variable-length kernel: each query scores its own context only
            pairs = ctx_sum + sum(n * (s + n / 2) for n, s in chunks)
            kv_read = (ctx_sum + sum(s for _, s in chunks)) * reads
        # each attention group holds 1/ep of the sequences and their KV cache; the chunks' own k/v are written
        kv_bytes = (kv_read + p_tok) * self.kv_tok / self.ep
        bw = self.dev.memory_bw
        f_attn = per_pair * pairs
        if self.dev.kind != "cpu":
            t_mem = (w_read + kv_bytes) / (bw * self.decode_eff(tokens / self.ep))
            f = mm_tok * tokens - (tokens - rows) * head + f_attn
            device = max(t_mem, f / peak + tokens * t_ew_tok) + spec.n_layers * self.layer_overhead_s + comm
            return max(device, self.host_s)
        if not self.decode_calibrated:
            # A CPU core runs one kernel at a time, so streaming the weights, the products and the element-wise
            # passes add up (CPU_NOTE).
            f = mm_tok * tokens - (tokens - rows) * head + f_attn
            return (w_read + kv_bytes) / (bw * self.bw_eff) + f / peak + tokens * t_ew_tok \
                + spec.n_layers * self.layer_overhead_s + comm
        # A measured decode step (bench infer) holds its rows' products, element-wise work and per-layer costs.
        t = comm + f_attn / peak
        p_rows = len(chunks)
        if decode or not self.prefill_calibrated:
            held = max(decode, 1)  # without decode rows, the first prompt row rides the measured step
            t += (w_read + kv_bytes) / (bw * self.decode_eff(held))
            extra = held - min(held, self.decode_curve[-1][0] if self.decode_curve else 1)
            t += extra * (mm_tok / peak + t_ew_tok)  # rows beyond the measured ones
            if not decode:
                p_tok, p_rows = p_tok - 1, p_rows - 1
        if p_tok > 0:
            f_p = mm_tok * p_tok - max(0, p_tok - p_rows) * head
            if self.prefill_calibrated:  # the measured prefill rate holds its element-wise passes and weights
                eff = curve_at(self.prefill_curve, p_tok) * self.fill if self.prefill_curve else self.mm_eff
                t_p = f_p / (w * self.dev.peak_flops(self.cdtype) * eff)
                # the weights are streamed once a step, and the decode rows' measured step already did
                t += max(0.0, t_p - (w_read / (bw * self.copy_eff) if decode else 0.0))
            else:
                t += f_p / peak + p_tok * t_ew_tok
        return t + spec.n_layers * self.layer_overhead_s


def step_model(job: ServingJob, m: Model, dev: Device, engine: Stack) -> StepModel:
    """The step model of ``job`` on one replica: priors, or the calibration's measured rates and curves."""
    cdtype = _compute_dtype(dev, job.precision)
    pri, _, bw_src, ew = _resolve(dev, cdtype, job.precision, job.calibration)
    calibrated = bw_src.startswith("calibration decode")
    graphs = engine.cuda_graphs if job.cuda_graphs is None else bool(job.cuda_graphs)
    ep = job.ep or 1
    tp = job.devices // ep
    kv_tok, _ = _kv_per_token_device(m, tp, kv_cache_dtype(job.precision, engine, dev, job.calibration, True).bytes)
    # + eager all-reduce (tp) and all-to-all (ep) launches
    ops = ops_per_forward(m.spec) + (2 * m.spec.n_layers if tp > 1 else 0) + (2 * moe_parts(m)[2] if ep > 1 else 0)
    host = 0.0 if graphs or dev.kind != "gpu" else ops * pri.infer_op_overhead_s
    fill, _ = shape_efficiency(dev, m.spec, min(engine.chunk_tokens, job.prompt_len), job.prompt_len, tp)
    dtypes = [d for d in (job.precision, cdtype) if d]
    cal = load_calibration(job.calibration)
    copy = cal and (cal.lookup(dev.id, cdtype, "membw") or cal.lookup(dev.id, "bf16", "membw"))
    return StepModel(m=m, dev=dev, tp=tp, ep=ep, engine=engine, graphs=graphs, cdtype=cdtype,
                     bytes_w=WEIGHT_BYTES[job.precision], kv_tok=kv_tok, mm_eff=pri.matmul_eff * fill,
                     bw_eff=pri.decode_bw_eff, ew_eff=ew if ew is not None else pri.decode_bw_eff,
                     act_traffic=pri.act_traffic, host_s=host, pri=pri, decode_calibrated=calibrated,
                     # a measured decode rate already holds the per-layer fixed cost (as in plan infer)
                     layer_overhead_s=0.0 if calibrated else pri.layer_overhead_s,
                     prefill_calibrated=ew is None, fill=fill, copy_eff=copy.efficiency if copy else pri.decode_bw_eff,
                     decode_curve=rows_curve(cal, dev.id, dtypes, "decode_rows") if calibrated else (),
                     prefill_curve=rows_curve(cal, dev.id, dtypes, "prefill_rows") if ew is None else ())
