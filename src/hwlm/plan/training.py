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
from typing import Any

from hwlm.errors import PlanError
from hwlm.formulas import ADAM_MIXED, train_flops_per_token
from hwlm.plan.catalog import Device
from hwlm.plan.efficiency import (ACHIEVABLE_SOURCE, DEFAULT_GRID_KG_PER_KWH, GRID_SOURCE, PUE_SOURCE, Calibration,
                                  Priors, load_calibration, priors_for)
from hwlm.plan.explain import Term, Terms
from hwlm.plan.jobs import TRAIN_PRECISIONS, TrainingJob, missing_figure_notes, resolve_hardware
from hwlm.plan.machine import THIS_MACHINE
from hwlm.plan.models import PAD_SOURCE, PADS_HEADS, Model, get_model, pad_heads
from hwlm.plan.software import default_framework, get_framework
from hwlm.plan.parallel import USABLE_MEMORY_FRACTION, Layout, MemoryBreakdown, validate_layout
# The layout search and what a layout costs live in their own modules; the names tests read stay here.
from hwlm.plan.layout_search import (_candidates, _choose, _fit_partial, _grow_micro_batch,  # noqa: F401
                                     _max_micro_batch, _smallest_fitting, _time_lower_bound)
from hwlm.plan.train_cost import (KORTHIKANTI, NARAYANAN, _activation_count, _Ctx, _flops_per_token,  # noqa: F401
                                  _memory, _memory_of, _relayout, _timing, routed_expert_params)

__all__ = ["TrainingEstimate", "TrainingJob", "estimate_training", "TRAIN_PRECISIONS", "DEFAULT_BATCH_TOKENS"]


SCHEDULES = ("1f1b", "interleaved")
# Default global batch ~4M tokens: Llama 2 (arXiv:2307.09288, section 2.2) and GPT-3 175B (3.2M).
DEFAULT_BATCH_TOKENS = 4 * 1024 * 1024


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




def _resolve_calibration(dev: Device, precision: str, calibration: Any) -> tuple[Priors, float | None, str]:
    maf = dev.achievable_flops(precision)
    pri = priors_for(dev.kind, precision, dev.peak_flops(precision), dev.memory_bw, achievable=maf,
                     balance_penalty=dev.balance_penalty(precision))
    cal: Calibration | None = load_calibration(calibration)
    source = f"prior for {dev.kind}/{precision}: {pri.source}" + (
        f"; x achievable {maf:.4g} / peak ({ACHIEVABLE_SOURCE}; {dev.source('achievable')})" if maf else "") + (
        "" if dev.balance_penalty(precision) else f"; no balance penalty ({dev.source('no_balance_penalty')})")
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
    # FP8 training leaves the attention-score products in 16 bits (train_cost.FP8_ATTENTION_SOURCE).
    attention_rate = None
    if precision == "fp8" and "bf16" in dev.flops:
        pri16 = _resolve_calibration(dev, "bf16", job.calibration)[0]
        attention_rate = dev.peak_flops("bf16") * pri16.matmul_eff
    ctx = _Ctx(model=m, dev=dev, devices=devices, precision=precision, tokens=float(job.tokens), seq_len=seq,
               batch_tokens=float(gb * seq), pri=pri, train_eff=train_eff, eff_source=eff_source,
               autocast=job.autocast, stack=stack, user_stack=bool(job.framework), padding=padding,
               capacity_factor=float(job.capacity_factor or 1.0), attention_rate=attention_rate)
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
