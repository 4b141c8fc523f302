"""Efficiency priors (what fraction of a datasheet peak real runs reach) and calibration files.

The planner never uses a per-run constant. Time comes from a small roofline model whose
few parameters depend only on the hardware kind, the data type and the phase:

* training and prefill compute: matrix products at ``matmul_eff`` x dense peak FLOP/s,
  plus the element-wise traffic of each layer (norms, activations, residuals, softmax
  statistics; ``act_traffic`` x 34·h bytes per token per layer, the activation size of
  Korthikanti et al. 2022, arXiv:2205.05198, eq. 1) at memory bandwidth. Small models lose
  more to the second term, which is how MFU grows with width;
* decode: bytes read per step at ``decode_bw_eff`` x bandwidth, plus a fixed
  ``layer_overhead_s`` per layer and step (kernel launches and synchronisation), which is
  why small models reach a lower fraction of bandwidth;
* ``train_overhead``: time lost outside the step loop in long runs (evaluation,
  checkpoints, restarts); reported GPU-hours include it;
* small models (see :func:`kernels_per_step`, :func:`gemm_shapes`): each kernel costs the host
  ``op_overhead_s`` (dispatch, autograd bookkeeping, on a GPU the launch: the "overhead" regime of
  He 2022, https://horace.io/brrr_intro.html), and a matrix product also moves its operands, which
  dominates when one of its dimensions is small (roofline, Williams et al. 2009). On a GPU the host
  runs ahead and kernels overlap their loads, so both only count where they exceed the compute; a
  CPU core does one thing at a time, so there they add. At the scale of the validation cases both
  vanish (a kernel takes milliseconds, every matrix dimension is in the thousands).

The numbers are fitted on the *fit* half of ``benchmarks/planner_cases.toml`` (published
measurements, each with its source) by ``benchmarks/planner_validation.py --fit``; the
other half is held out and reported in ``docs/planner-validation.md``.

A calibration file (``hwlm bench calibrate``; schema and reader in :mod:`hwlm.calibration`) replaces
a prior with a measured efficiency for a (device, dtype, phase).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from hwlm.calibration import PHASES, THIS_MACHINE, CalibrationEntry, read_calibration

__all__ = ["Priors", "priors_for", "Calibration", "load_calibration", "DEFAULT_PUE",
           "DEFAULT_GRID_KG_PER_KWH", "PUE_SOURCE", "GRID_SOURCE", "PRIOR_SOURCE", "PHASES", "OP_OVERHEAD_SOURCE",
           "kernels_per_step", "gemm_shapes", "Gemm", "ops_per_forward", "INFER_OP_OVERHEAD_SOURCE",
           "mxu_utilization", "MXU_SOURCE", "shape_efficiency", "ACHIEVABLE_SOURCE"]

DEFAULT_PUE = 1.2
PUE_SOURCE = "PUE 1.2: Luccioni et al. 2022, arXiv:2211.02001 (BLOOM's Jean Zay data centre)"
DEFAULT_GRID_KG_PER_KWH = 0.475
GRID_SOURCE = "475 gCO2/kWh: IEA Global Energy & CO2 Status Report 2019 (world average of power generation)"
PRIOR_SOURCE = "fitted on the fit split of benchmarks/planner_cases.toml (see docs/planner-validation.md)"


@dataclass(frozen=True)
class Priors:
    """Efficiency parameters for one hardware kind and data type."""

    matmul_eff: float        # achieved / dense peak FLOP/s for large matrix products
    act_traffic: float       # element-wise bytes moved per token-layer, in units of 34·h·2 bytes (fwd+bwd each)
    decode_bw_eff: float     # achieved / peak memory bandwidth when streaming weights and KV cache
    layer_overhead_s: float  # fixed seconds per layer per forward step (launches, syncs)
    train_overhead: float    # fraction of wall time outside the training step in long runs
    comm_eff: float          # achieved / link bandwidth for collectives (NCCL bus bandwidth)
    power_fraction: float    # average draw / TDP under load
    allreduce_latency_s: float = 10e-6  # fixed cost of one small all-reduce (decode under tensor parallelism)
    ridge_exponent: float = 0.0  # matmul_eff scales as (REF_RIDGE / (peak/bandwidth))^ridge_exponent
    int8_decode: float = 1.0     # decode bandwidth efficiency multiplier for int8 weight-only kernels
    int4_decode: float = 1.0     # ... and for int4 (group-wise scales, dequantisation in the kernel)
    op_overhead_s: float = 5e-6  # host seconds per kernel in eager training (dispatch + autograd; GPU: launch)
    infer_op_overhead_s: float = 20e-6  # host seconds per op of an eager forward (Python modules + dispatch + launch)
    source: str = PRIOR_SOURCE


# Per hardware kind. Fitted values (see module docstring); the constants marked as
# assumptions are not identifiable from the cases and come from the cited measurements.
_KIND_PRIORS: dict[str, Priors] = {
    "gpu": Priors(matmul_eff=0.605, act_traffic=2.54, decode_bw_eff=0.790, layer_overhead_s=40e-6,
                  train_overhead=0.164, comm_eff=0.837, power_fraction=1.0, allreduce_latency_s=10e-6,
                  ridge_exponent=0.195, int8_decode=0.615, int4_decode=0.578, op_overhead_s=10e-6),
    # TPU: no case in the fit split (PaLM is held out), so it takes the GPU's fitted values;
    # a smaller launch cost per layer (XLA compiles the whole step).
    # The GPU's balance penalty (ridge_exponent, fitted on A100/H100 rows: GPU kernels need larger tiles and
    # more on-chip reuse as peak/bandwidth grows) is left out: a TPU's compiler tiles to its MXU, whose fill
    # by the model's shapes is modelled instead (shape_efficiency, the catalog's matrix_unit).
    "tpu": Priors(matmul_eff=0.605, act_traffic=2.54, decode_bw_eff=0.790, layer_overhead_s=10e-6,
                  train_overhead=0.164, comm_eff=0.837, power_fraction=1.0, allreduce_latency_s=10e-6,
                  ridge_exponent=0.0, int8_decode=0.615, int4_decode=0.578, op_overhead_s=1e-6),
    # CPU: not fitted (no published CPU cases); assumptions: oneDNN GEMMs reach about half of
    # peak, STREAM-like decode about 60% of bandwidth, a launch cost per layer of ~50 us.
    "cpu": Priors(matmul_eff=0.50, act_traffic=2.60, decode_bw_eff=0.60, layer_overhead_s=50e-6,
                  train_overhead=0.152, comm_eff=0.5, power_fraction=1.0, allreduce_latency_s=50e-6,
                  op_overhead_s=5e-6),
}
OP_OVERHEAD_SOURCE = ("prior per kernel: CPU 5 us (PyTorch eager op with autograd, ~3.5 us measured on a 2-core Xeon "
                      "by `hwlm quickstart`), GPU 10 us (CUDA launch ~5 us + eager dispatch), TPU 1 us (XLA compiles "
                      "the step); the overhead regime of He 2022, https://horace.io/brrr_intro.html")
INFER_OP_OVERHEAD_SOURCE = (
    "prior per op of an eager GPU forward: 20 us, measured by `hwlm bench infer` for gpt2-124m on an H200 "
    "(benchmarks/results/h200-2026-11-28: 2.7-3.1 ms per decode step at batch 1-32 over 136 ops); with CUDA graphs "
    "(gpt-fast, vLLM) the host replays a whole step at once, so the term is left out")
_DEFAULT_KIND = "gpu"
# The hardware generation enters through the device's balance, its ridge point peak/bandwidth
# (Williams et al. 2009, roofline): the higher it is, the larger the tiles and the more reuse a
# kernel needs to reach peak, so the smaller the share of peak real runs reach (A100 bf16: ~153
# FLOP/byte; H100 SXM bf16: ~295; H100 fp8: ~590). REF_RIDGE is the A100's.
REF_RIDGE = 153.0


ACHIEVABLE_SOURCE = ("a vendor-measured maximum dense-GEMM rate (catalog [device.achievable]) replaces the "
                     "datasheet peak that matmul_eff scales: the datasheet counts the boost clock, while a dense "
                     "GEMM runs at the clock its power allows (AMD's MAF: MI300X FP8 at a median 1,230 MHz against "
                     "its 2,100 MHz peak engine clock); the NVIDIA parts the priors were fitted on publish no "
                     "such figure, so their gap stays inside matmul_eff (assumed: theirs is the smaller)")


def priors_for(kind: str, dtype: str, peak: float | None = None, bandwidth: float | None = None,
               weight_dtype: str | None = None, achievable: float | None = None,
               balance_penalty: bool = True) -> Priors:
    """The prior parameters for a hardware kind, compute data type and (optionally) balance.

    ``achievable`` (the catalog's measured maximum dense-GEMM FLOP/s for the dtype, when the vendor publishes
    one) takes the peak's place: ``matmul_eff`` is then a share of it (scaled here by achievable / peak, so
    callers keep multiplying by the datasheet peak), and the balance penalty uses its ridge point.
    ``balance_penalty=False`` (``Device.balance_penalty``: a published measurement shows the part's GEMMs
    keep their utilisation at its ridge point) leaves that GPU-fitted penalty out.

    >>> p, q = priors_for("gpu", "fp8", 2614.9e12, 5.3e12), priors_for("gpu", "fp8", 2614.9e12, 5.3e12, achievable=1273e12)
    >>> round(p.matmul_eff * 2614.9, 0), round(q.matmul_eff * 2614.9, 0)   # TFLOP/s reached
    (1259.0, 705.0)
    """
    p = _KIND_PRIORS.get(kind, _KIND_PRIORS[_DEFAULT_KIND])
    mm = p.matmul_eff
    rate = peak
    if achievable and peak:
        mm *= min(1.0, achievable / peak)
        rate = min(achievable, peak)
    if rate and bandwidth and p.ridge_exponent and balance_penalty:
        # Only penalise: below the reference ridge, other limits (launches, small tiles) dominate.
        mm *= min(1.0, (REF_RIDGE / (rate / bandwidth)) ** p.ridge_exponent)
    bw = p.decode_bw_eff * {"int8": p.int8_decode, "int4": p.int4_decode}.get(weight_dtype or "", 1.0)
    return replace(p, matmul_eff=mm, decode_bw_eff=bw)


def kernels_per_step(spec: Any, autocast: bool = False) -> float:
    """Kernels one forward + backward + optimizer step of one micro-batch launches in eager PyTorch.

    Counted with a ``TorchDispatchMode`` on hwlm's own model (torch 2.13, views left out): a GPT-2
    style layer (LayerNorm, GELU, fused q/k/v) runs 29 kernels forward and backward; RMSNorm as
    composite ops adds 18, SwiGLU 8, rotary positions 30 (Llama style: 85); autocast adds 22 casts
    per layer. Embeddings, loss, clipping and the fused AdamW add about 50 per step.

    >>> from hwlm.formulas import ArchSpec
    >>> kernels_per_step(ArchSpec(vocab_size=2048, d_model=128, n_layers=4, n_heads=4))
    165.0
    """
    per_layer = 29 + (18 if spec.norm == "rmsnorm" else 0) + (8 if spec.mlp == "swiglu" else 0) + (
        30 if spec.pos == "rope" else 0) + (22 if autocast else 0)
    return float(spec.n_layers * per_layer + 49 + (6 if autocast else 0))


def ops_per_forward(spec: Any) -> float:
    """Ops (kernels, bar views) one eager forward step of hwlm's model dispatches, whatever its token count.

    Counted with a ``TorchDispatchMode`` on a decode step of hwlm's own model (torch 2.13, views left
    out): a GPT-2 style layer runs 11 (LayerNorm x2, q/k/v, KV-cache write, attention, output, two MLP
    products, GELU, two residual adds); SwiGLU adds 2 (split, gate product), rotary positions 5.
    Embeddings, the final norm, the output layer and the greedy pick add 4.

    >>> from hwlm.formulas import ArchSpec
    >>> ops_per_forward(ArchSpec(vocab_size=50304, d_model=768, n_layers=12, n_heads=12))
    136.0
    """
    per_layer = 11 + (2 if spec.mlp == "swiglu" else 0) + (5 if spec.pos == "rope" else 0)
    return float(spec.n_layers * per_layer + 4)


@dataclass(frozen=True)
class Gemm:
    """One matrix product (M x K) @ (K x N), run ``count`` times per forward pass."""

    m: float
    n: float
    k: float
    count: float
    operand_elems: float  # elements of its operands and result that cross memory (one call)

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k


@lru_cache(maxsize=4096)
def gemm_shapes(spec: Any, tokens: float, seq_len: int, tp: int = 1) -> tuple[Gemm, ...]:
    """The matrix products of one forward pass over ``tokens`` tokens (per device under tp).

    Linear layers: (tokens x in) @ (in x out); the backward runs two more products on the same three
    matrices. Attention, per sequence and head: scores (T x qk) @ (qk x T) and (T x T) @ (T x v); as
    in FlashAttention-style kernels (GPU and PyTorch's CPU kernel) the T x T block stays on chip, so
    only Q, K, V and the output cross memory.
    """
    d, H, K = spec.d_model, spec.n_heads / tp, spec.kv_heads / tp
    ff = (spec.moe_d_ff or spec.ff) * (spec.experts_per_token if spec.n_experts > 1 else 1)
    up = ff * (2 if spec.mlp == "swiglu" else 1) / tp
    lin = [(d, H * spec.qk_dim + K * (spec.qk_dim + spec.vd)), (H * spec.vd, d), (d, up), (ff / tp, d)]
    out = [Gemm(tokens, n, k, spec.n_layers, tokens * k + k * n + tokens * n) for k, n in lin]
    out.append(Gemm(tokens, spec.vocab_size / tp, d, 1, tokens * d + d * spec.vocab_size / tp
                    + tokens * spec.vocab_size / tp))
    seqs, T = tokens / seq_len, seq_len
    heads = spec.n_layers * seqs * H
    io = T * (2 * spec.qk_dim + 2 * spec.vd)  # Q, K, V, O of one head
    out.append(Gemm(T, T, spec.qk_dim, heads, io / 2))
    out.append(Gemm(T, spec.vd, T, heads, io / 2))
    return tuple(out)  # cached: the layout search asks for the same shapes per micro-batch and tp


MXU_SOURCE = ("Google Cloud TPU performance guide (cloud.google.com/tpu/docs/performance-guide): the MXU is a "
              "systolic array fed in tiles of its side; a matrix dimension that is not a multiple of it is padded, "
              "so the padding's share of the array does no work (128 on v2-v5p, 256 on v6e)")


def mxu_utilization(spec: Any, tokens: float, seq_len: int, unit: int, tp: int = 1) -> float:
    """FLOP-weighted share of a ``unit`` x ``unit`` systolic array the forward pass's matrix products fill.

    Each product (M x K) @ (K x N) holds a K x N tile in the array while M rows stream through, so K and N
    are padded up to multiples of ``unit`` (M only streams). Attention's score products contract over the
    head dimension (Q K^T: K = head_dim) and produce it (P V: N = head_dim), so a head_dim of 128 fills half of
    a 256-wide array. Returns sum(FLOPs) / sum(FLOPs / utilisation).

    >>> from hwlm.formulas import ArchSpec
    >>> s = ArchSpec(vocab_size=32768, d_model=4096, n_layers=2, n_heads=32)   # head_dim 128
    >>> round(mxu_utilization(s, 4096, 4096, 128), 3), round(mxu_utilization(s, 4096, 4096, 256), 3)
    (1.0, 0.9)
    """
    def fill(d: float) -> float:
        return d / (math.ceil(d / unit - 1e-9) * unit) if d > 0 else 1.0
    work = cost = 0.0
    for g in gemm_shapes(spec, tokens, seq_len, tp):
        f = g.flops * g.count
        work += f
        cost += f / (fill(g.k) * fill(g.n))
    return work / cost if cost else 1.0


def shape_efficiency(dev: Any, spec: Any, tokens: float, seq_len: int, tp: int = 1) -> tuple[float, str]:
    """The matrix unit's fill for this model's products on ``dev`` (1.0 where the catalog gives no
    ``matrix_unit``: GPU kernels tile flexibly and their fitted ``matmul_eff`` covers it) and a description."""
    unit = getattr(dev, "matrix_unit", None)
    if not unit:
        return 1.0, ""
    u = mxu_utilization(spec, tokens, max(1, seq_len), unit, tp)
    return u, f"MXU {unit}x{unit} filled {u:.3f} by this model's shapes"


def set_kind_priors(kind: str, priors: Priors) -> None:
    """Replace the priors of one kind (used by the validation script's fit and leave-one-out)."""
    _KIND_PRIORS[kind] = priors


def kind_priors(kind: str) -> Priors:
    return _KIND_PRIORS.get(kind, _KIND_PRIORS[_DEFAULT_KIND])


class Calibration:
    """Measured efficiencies that replace the priors for matching (device, dtype, phase)."""

    def __init__(self, entries: list[CalibrationEntry], path: str = "", machine: dict[str, Any] | None = None) -> None:
        self.entries = entries
        self.path = path
        self.machine = machine or {}  # the bench records' machine description

    def lookup(self, device_id: str, dtype: str, phase: str) -> CalibrationEntry | None:
        """Exact device first, then entries for ``this-machine``."""
        for dev in (device_id, THIS_MACHINE):
            for e in self.entries:
                if e.device == dev and e.dtype == dtype and e.phase == phase:
                    return e
        return None


def load_calibration(path: str | Path | None) -> Calibration | None:
    """Read and check a calibration file (:func:`hwlm.calibration.read_calibration`); ``None`` passes through."""
    if path is None or isinstance(path, Calibration):
        return path
    f = read_calibration(path)
    return Calibration(f.entries, f.path, f.machine)
