"""Parallel layouts: validity, memory per device and communication volume and time.

A :class:`Layout` splits ``devices = dp * tp * pp`` (data, tensor and pipeline parallel),
with a ZeRO stage for the data-parallel group (3 = FSDP) and an activation recompute mode; for a
mixture-of-experts model ``ep`` ranks of the data-parallel group share the routed experts (expert
parallelism, GShard, Lepikhin et al. 2020, arXiv:2006.16668; Megatron-Core's expert_model_parallel_size).

Memory (per device), mixed-precision Adam (Rajbhandari et al. 2020, ZeRO, arXiv:1910.02054,
section 3.1): 2 bytes of bf16 weights + 2 of gradients + 12 of fp32 master copy, momentum and
variance = 16 bytes per parameter; ZeRO stage 1 shards the 12, stage 2 also the gradients,
stage 3 (FSDP) also the weights, over dp. tp and pp divide everything.

Activations per layer and micro-batch, by the training stack's count (``hwlm.plan.software``):
Megatron-style stacks (16-bit weights, FlashAttention) keep
:func:`hwlm.formulas.korthikanti_activation_bytes_per_layer` (Korthikanti et al. 2022, arXiv:2205.05198,
table 2: 34·s·b·h per layer, 2·s·b·h under full recompute, divided by t with sequence parallelism) and
:func:`~hwlm.formulas.korthikanti_outside_layers_bytes`; hwlm's own loop keeps
:func:`hwlm.formulas.saved_activation_bytes_per_layer`, counted tensor by tensor from hwlm's model (fp32
residual stream, autocast weight copies) and tested against autograd's saved tensors, divided by t; full
recompute keeps only the layer input; "partial" recomputes k of the L layers fully and the rest
selectively (Megatron's ``--recompute-num-layers``), the cheapest choice that fits. Under 1F1B the first
pipeline stage holds ``pp`` micro-batches of its ``L/pp`` layers, so ``L`` layers' worth in total (ibid.,
section 4.2.3).

Communication (ring collectives; Patarasuk & Yuan 2009): an all-reduce of V bytes over n
ranks moves ``2·(n-1)/n·V`` per rank; reduce-scatter + all-gather move the same; ZeRO-3 adds
one more all-gather (``3·(n-1)/n·V``, ZeRO paper section 7.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from hwlm.errors import PlanError
from hwlm.formulas import (ACTIVATION_COUNTS, ADAM_FP32, ADAM_MIXED, ArchSpec, heap_slack_bytes, korthikanti_activation_bytes_per_layer,
                           korthikanti_outside_layers_bytes, loss_path, loss_transient_bytes, saved_activation_bytes_per_layer,
                           saved_outside_layers_bytes, step_peak)

__all__ = ["Layout", "MemoryBreakdown", "validate_layout", "training_memory", "link_bandwidth",
           "RECOMPUTE_MODES", "USABLE_MEMORY_FRACTION"]

RECOMPUTE_MODES = ("none", "selective", "partial", "full")
Recompute = Literal["none", "selective", "partial", "full"]
# Share of device memory a framework can really use (CUDA context, allocator fragmentation).
USABLE_MEMORY_FRACTION = 0.9
# Link speed assumed when the catalog gives none (PCIe 4.0 x16, 32 GB/s per direction).
FALLBACK_LINK_BW = 32e9


@dataclass(frozen=True)
class Layout:
    """How a job is split over devices."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    zero_stage: int = 0                 # 0 plain data parallel, 1/2 ZeRO, 3 ZeRO-3 / FSDP
    recompute: Recompute = "selective"
    micro_batch: int = 1                # sequences per device per micro-step
    virtual_stages: int = 1             # >1: interleaved 1F1B, each device holds this many model chunks
    recompute_layers: int = 0           # recompute="partial": layers recomputed fully (the rest selectively)
    ep: int = 1                         # expert parallel (MoE): routed experts sharded over ep ranks of dp

    @property
    def devices(self) -> int:
        return self.dp * self.tp * self.pp

    def describe(self) -> str:
        z = {0: "ddp", 1: "zero1", 2: "zero2", 3: "fsdp"}[self.zero_stage]
        v = f" (interleaved x{self.virtual_stages})" if self.virtual_stages > 1 and self.pp > 1 else ""
        rc = f"partial ({self.recompute_layers} layers full)" if self.recompute == "partial" else self.recompute
        ep = f" ep={self.ep}" if self.ep > 1 else ""
        return (f"dp={self.dp} ({z}) tp={self.tp} pp={self.pp}{v}{ep} micro_batch={self.micro_batch} "
                f"recompute={rc}")

    def recompute_fraction(self, n_layers: int) -> float:
        """Share of layers whose forward runs twice."""
        if self.recompute == "full":
            return 1.0
        return min(self.recompute_layers, n_layers) / n_layers if self.recompute == "partial" else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"dp": self.dp, "tp": self.tp, "pp": self.pp, "zero_stage": self.zero_stage,
                "recompute": self.recompute, "recompute_layers": self.recompute_layers,
                "micro_batch": self.micro_batch, "virtual_stages": self.virtual_stages, "ep": self.ep,
                "description": self.describe()}


def validate_layout(spec: ArchSpec, devices: int, layout: Layout, model_name: str = "model") -> None:
    """Raise :class:`PlanError` (one line) when the layout cannot run this model on these devices."""
    for key, v in (("dp", layout.dp), ("tp", layout.tp), ("pp", layout.pp), ("micro_batch", layout.micro_batch),
                   ("virtual_stages", layout.virtual_stages)):
        if not isinstance(v, int) or v < 1:
            raise PlanError(f"{key}={v!r} must be a whole number >= 1")
    if layout.devices != devices:
        raise PlanError(f"layout dp={layout.dp} x tp={layout.tp} x pp={layout.pp} = {layout.devices} "
                        f"does not match --devices {devices}; make the degrees multiply to {devices}")
    if spec.n_heads % layout.tp:
        raise PlanError(f"tp={layout.tp} does not divide the {spec.n_heads} attention heads of {model_name}; "
                        f"choose a divisor of {spec.n_heads}")
    if layout.pp > spec.n_layers:
        raise PlanError(f"pp={layout.pp} exceeds the {spec.n_layers} layers of {model_name}; "
                        f"use pp <= {spec.n_layers}")
    if layout.pp * layout.virtual_stages > spec.n_layers:
        raise PlanError(f"pp={layout.pp} x virtual_stages={layout.virtual_stages} exceeds the {spec.n_layers} layers "
                        f"of {model_name}; use fewer stages")
    if not isinstance(layout.ep, int) or layout.ep < 1 or layout.dp % layout.ep:
        raise PlanError(f"ep={layout.ep!r} must be a whole number dividing dp={layout.dp} (experts are sharded "
                        "over data-parallel ranks)")
    if layout.ep > 1 and spec.n_experts % layout.ep:
        raise PlanError(f"ep={layout.ep} does not divide the {spec.n_experts} routed experts of {model_name}"
                        + ("" if spec.n_experts > 1 else " (it has none: expert parallelism needs an MoE model)"))
    if layout.zero_stage not in (0, 1, 2, 3):
        raise PlanError(f"zero_stage={layout.zero_stage} must be 0, 1, 2 or 3 (3 = FSDP)")
    if layout.recompute not in RECOMPUTE_MODES:
        raise PlanError(f"recompute={layout.recompute!r} must be one of {', '.join(RECOMPUTE_MODES)}")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per device."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    capacity: float
    gradients_at_forward: bool = True  # False: one process, one micro-batch a step (formulas.training_memory)

    @property
    def total(self) -> float:
        return step_peak(self.weights, self.gradients, self.optimizer, self.activations, self.gradients_at_forward)

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity * USABLE_MEMORY_FRACTION


def training_memory(spec: ArchSpec, total_params: int, layout: Layout, seq_len: int, capacity: float,
                    precision: str = "bf16", device_kind: str = "gpu", activations: str = "korthikanti") -> MemoryBreakdown:
    """Memory per device of Adam training under ``layout``: :func:`hwlm.formulas.training_memory`'s parts
    (the launch decision's figure on one device), sharded by the layout.

    State: :data:`~hwlm.formulas.ADAM_MIXED` (:data:`~hwlm.formulas.ADAM_FP32` in fp32), ZeRO stage 1 shards the
    optimizer part, 2 also the gradients,
    3 also the weights, over dp; tp and pp divide everything. Activations: the flash-attention kernels
    keep no (T, T) probabilities, so ``none`` and ``selective`` keep the same set; ``partial`` recomputes
    k layers fully and the rest selectively; sequence parallelism divides them by tp. Accelerators are
    assumed to run compiled (the loss's logits as in the H200 record), CPUs eager with the heap slack.
    ``activations`` names the count (:data:`~hwlm.formulas.ACTIVATION_COUNTS`): ``"korthikanti"`` for
    Megatron-style stacks, ``"hwlm"`` for hwlm's own loop (the framework's field in ``hwlm.plan.software``).
    """
    if activations not in ACTIVATION_COUNTS:
        raise PlanError(f"activation count {activations!r} is unknown; choose one of {', '.join(ACTIVATION_COUNTS)}")
    shard = layout.tp * layout.pp
    local = total_params / shard
    dp, z, L = layout.dp, layout.zero_stage, spec.n_layers
    # fp32 training has no 16-bit copies and no master copy: 4 + 4 + AdamW's 8 (what ZeRO-1 then shards); nor has
    # hwlm's loop, whose weights stay fp32 under autocast (fp32 gradients; its casts are autocast_copies).
    state = ADAM_FP32 if precision in ("fp32", "tf32") or activations == "hwlm" else ADAM_MIXED
    weights = state.weights * local / (dp if z >= 3 else 1)
    grads = state.gradients * local / (dp if z >= 2 else 1)
    optimizer = state.optimizer * local / (dp if z >= 1 else 1)
    k = round(layout.recompute_fraction(L) * L) if layout.recompute in ("full", "partial") else 0
    acts = _activation_bytes(spec, seq_len, layout.micro_batch, layout.tp, k, precision, device_kind, activations)
    return MemoryBreakdown(weights=weights, gradients=grads, optimizer=optimizer, activations=acts,
                           capacity=capacity)


@lru_cache(maxsize=1 << 14)
def _activation_bytes(spec: ArchSpec, seq_len: int, micro_batch: int, tp: int, k: int, precision: str,
                      device_kind: str, activations: str) -> float:
    """Saved activations per device of one layout (k of the L layers fully recomputed): the part of
    :func:`training_memory` that does not depend on dp or the ZeRO stage, cached because a layout search asks
    for it once per ZeRO stage and data-parallel width."""
    L = spec.n_layers
    tokens = seq_len * micro_batch
    megatron = activations == "korthikanti"

    def per_layer(mode: str) -> float:
        if megatron:
            return korthikanti_activation_bytes_per_layer(spec, seq_len, micro_batch, mode, tp, precision=precision)
        return saved_activation_bytes_per_layer(spec, tokens, seq_len, precision, "flash", mode) / tp
    # Megatron's selective recompute drops the attention core's (T, T) tensors, which flash kernels never
    # keep: its layers hold what no recompute holds. 1F1B: the first stage holds pp micro-batches of L/pp
    # layers = L layers' worth. A fully recomputed layer's set is alive again during its backward.
    none = per_layer("none")
    full = per_layer("full") if k else 0.0
    acts = k * full + (L - k) * none + (none - full if k else 0.0)
    # The loss's peak, on the last stage, split by tp (formulas: saved gradient, logits and their copies).
    # Megatron-style: Korthikanti's fp32 logits and the two matmul inputs, plus the logits' transient at the
    # loss's backward as measured for a compiled loop (4 + 6 = 10 B per bf16 logit, the H200 record).
    # hwlm's own loop fuses the output layer and loss in row chunks when no autocast is on (formulas.loss_path).
    compiled = device_kind != "cpu"
    loss = "full" if megatron else loss_path(precision)
    saved = (korthikanti_outside_layers_bytes(spec, seq_len, micro_batch, 1, precision) if megatron
             else saved_outside_layers_bytes(spec, tokens, precision, loss))
    return acts + (saved + loss_transient_bytes(spec, tokens, precision, loss, device_kind, compiled)
                   + heap_slack_bytes(spec, tokens, loss, device_kind)) / tp


def link_bandwidth(intra_bw: float | None, inter_bw: float | None, group_span: int, scale_up: int) -> tuple[float, str]:
    """Per-device bandwidth (bytes/s) for a group whose members are ``group_span`` devices apart.

    Groups that stay inside the scale-up domain (NVLink node, TPU slice) use the fast link;
    otherwise each device's share of the network.
    """
    if group_span <= scale_up and intra_bw:
        return intra_bw, "intra-node link"
    if inter_bw:
        return inter_bw, "inter-node network"
    return intra_bw or FALLBACK_LINK_BW, "assumed PCIe 4.0 x16 (catalog gives no link)"
