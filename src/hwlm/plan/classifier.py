"""Pricing the small classifiers (the LSTM sentence classifier, the digits MLP, the bag of words) on any hardware.

``hwlm plan train --config lstm-sentences --hardware h100-sxm`` reads the recipe's ``[train]`` and ``[task]``
tables (batch, epochs, the classifier's shape) and the workload (``--data DIR`` from ``hwlm prepare --task
classify``: its examples, classes, vocabulary and token lengths; else the recipe's ``[plan]`` table), and
predicts one training run and batched inference: time, memory, energy, cost, each step a
:class:`~hwlm.plan.explain.Term`. Torch-free; the counts come from :mod:`hwlm.formulas`
(:func:`~hwlm.formulas.classifier_param_count`, ``classifier_train_flops``, ``classifier_activation_bytes``).

How time is modelled. Every kernel costs its FLOPs at ``matmul_eff`` x peak, the bytes it moves at the
bandwidth, and the host's ``op_overhead_s`` per kernel (the priors of :mod:`hwlm.plan.efficiency`, or a
calibration). A CPU core does one thing at a time, so there the three add; a GPU's host runs ahead of the
device, so a kernel takes the largest of the three (the convention of :mod:`hwlm.plan.training`).

The LSTM is sequential in time. hwlm's LSTM runs over the right-padded batch (``hwlm.model.classifier``): a
batch of ``B`` texts whose longest has ``S`` tokens runs ``S`` dependent steps per layer over all ``B`` rows
(``B x S`` tokens processed, of which ``B`` x mean length are real), each step a thin product
``(B x h) @ (h x 4h)`` and the gate arithmetic; the backward runs two more thin products per step. The input
projection of all steps is one large product per layer (cuDNN computes it so, Appleyard 2016; so does
oneDNN). So its matrix efficiency is *not* a large-matmul figure: the thin products pay their operands'
traffic each step (roofline), and on a GPU each step is 2 kernels forward (the GEMM and one fused gate
kernel) and 2 backward, so a small LSTM is launch-bound there (``S`` x layers x 4 launches per batch whatever
the GPU's FLOP/s). On an x86 CPU the whole recurrence of a layer is one oneDNN RNN call (``mkldnn_rnn_layer``
and its backward, seen in the profiler), so no per-step host cost: the thin products and gate traffic remain.
The prediction is checked against ``hwlm train --config lstm-sentences`` / ``digits-mlp`` on this machine
(``benchmarks/classify.py --plan-check``, docs/benchmarks.md).

    >>> est = estimate_classifier(job_from_recipe("digits-mlp", hardware="h100-sxm"))
    >>> est.kind, est.params, est.steps
    ('mlp', 85002, 675)
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hwlm.config import load_toml, option, resolve
from hwlm.errors import ConfigError, PlanError
from hwlm.formulas import (ADAM_FP32, ClassifierShape, classifier_activation_bytes, classifier_forward_flops,
                           classifier_param_count, classifier_train_flops)
from hwlm.plan.catalog import Device
from hwlm.plan.efficiency import (DEFAULT_GRID_KG_PER_KWH, DEFAULT_PUE, OP_OVERHEAD_SOURCE, Priors, load_calibration,
                                  priors_for)
from hwlm.plan.explain import Term, Terms
from hwlm.plan.jobs import missing_figure_notes, resolve_hardware
from hwlm.plan.machine import THIS_MACHINE
from hwlm.plan.parallel import USABLE_MEMORY_FRACTION
from hwlm.plan.training import energy_terms  # the one energy and CO2 term of the planner

__all__ = ["ClassifierJob", "ClassifierEstimate", "estimate_classifier", "job_from_recipe", "data_workload",
           "is_classifier_recipe", "APPLEYARD"]

APPLEYARD = ("Appleyard 2016, 'Optimizing Recurrent Neural Networks in cuDNN 5', NVIDIA developer blog: the input "
             "GEMMs of all steps as one, one recurrent GEMM and one fused element-wise kernel per step")
CPU_CELL = ("oneDNN's RNN primitive: one call per layer for all steps (aten::mkldnn_rnn_layer and its backward in "
            "torch 2.13's profiler), so no per-step host cost")
TF32_CUDNN = "PyTorch defaults: torch.backends.cudnn.allow_tf32 = True, torch.backends.cuda.matmul.allow_tf32 = False"
# Kernels per recurrent step and layer (forward, backward), by where the LSTM runs (see the module docstring).
STEP_KERNELS = {"gpu": (2, 2), "cpu": (0, 0)}
# Values read or written per token and layer by the gate arithmetic: forward 4h pre-activations written and read,
# 4h activations, c, tanh(c) and h (about 16h); the backward about twice that.
GATE_VALUES = 16
# Kernels outside the recurrence, counted with a TorchDispatchMode on hwlm's models (torch 2.13, views left
# out; the CPU LSTM's whole recurrence is one of them): (training step: base, per layer; inference batch: base,
# per layer). A training step holds the forward, the loss, backward, clipping and the fused AdamW step.
FIXED_KERNELS = {"lstm": (64, 14, 19, 1), "mlp": (28, 17, 2, 2), "bow": (49, 0, 16, 0)}
# Host work of collating one batch (hwlm.train.classify.collate): 3 tensor operations per text row; a
# feature row is converted from Python floats, about 20 ns each (an assumption, not measured).
COLLATE_OPS_PER_TEXT = 3
PY_FLOAT_S = 20e-9
DIGITS = {"examples": 1797, "n_features": 64, "n_classes": 10,
          "source": "scikit-learn's bundled digits (load_digits): 1,797 8x8 images, 10 classes"}


@dataclass
class ClassifierJob:
    """One classifier training run (and its batched inference) to price (``hwlm plan train --config``)."""

    shape: ClassifierShape = option(None, "the classifier's shape (hwlm.formulas.ClassifierShape)", cli=False)
    hardware: Any = option(None, "catalog id, a plan.Device, or this-machine with a calibration file")
    examples: int = option(0, "training examples")
    val_examples: int = option(0, "validation examples (each evaluation predicts them all)")
    mean_len: float = option(0.0, "real tokens per text, after the recipe's max_len cut (0 for feature rows)")
    steps_len: float = option(0.0, "recurrent steps per batch: the longest text of a batch, on average")
    batch_size: int = option(64, "texts per optimizer step")
    epochs: float = option(3.0, "passes over the training split")
    max_steps: int | None = option(None, "optimizer steps (default: epochs x examples / batch)")
    eval_interval: int = option(0, "steps between evaluations (0: one at the end)")
    infer_batch: int = option(256, "texts per inference batch (hwlm predict's)")
    precision: str = option("fp32", "hwlm trains these classifiers in fp32")
    calibration: Any = option(None, "calibration JSON from `hwlm bench calibrate` (replaces the priors)")
    pue: float = option(DEFAULT_PUE, "data-centre PUE")
    grid_intensity: float = option(DEFAULT_GRID_KG_PER_KWH, "kg CO2 per kWh (default world average)")
    price_per_hour: float | None = option(None, "USD per device-hour (default: catalog)")
    power_w: float | None = option(None, "watts per device (default: catalog TDP)")
    workload_source: str = option("", "where examples and lengths came from", cli=False)

    def __post_init__(self) -> None:
        if not isinstance(self.shape, ClassifierShape):
            raise PlanError("a classifier job needs the classifier's shape (hwlm.formulas.ClassifierShape)")
        for name in ("examples", "batch_size", "infer_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PlanError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v!r}")
        if self.shape.kind != "mlp" and not self.mean_len > 0:
            raise PlanError(f"--mean-len must be a positive number of tokens per text, got {self.mean_len!r}")
        if not self.epochs > 0:
            raise PlanError(f"epochs must be more than zero, got {self.epochs!r}")
        if self.precision != "fp32":
            raise PlanError(f"hwlm trains the {self.shape.kind} classifier in fp32, not {self.precision}; drop "
                            "--precision")
        self.steps_len = self.steps_len or self.mean_len


@dataclass
class ClassifierEstimate:
    """The prediction for one classifier run. Times in seconds, memory in bytes."""

    kind: str
    hardware: str
    params: int
    examples: int
    steps: int
    tokens: float
    flops: float
    memory_bytes: float
    fits: bool
    step_time_s: float
    train_time_s: float
    eval_time_s: float
    time_s: float
    tokens_per_s: float
    examples_per_s: float
    mfu: float
    energy_kwh: float | None
    co2_kg: float | None
    cost_usd: float | None
    infer_batch_s: float
    infer_examples_per_s: float
    infer_cost_per_million_usd: float | None
    infer_energy_per_example_j: float | None
    terms: list[Term] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("terms", "notes")}
        return out | {"terms": [t.to_dict() for t in self.terms], "notes": list(self.notes)}


def is_classifier_recipe(recipe: str | Path) -> bool:
    """Whether a recipe's ``[task]`` table asks for a classifier the planner prices this way."""
    task = load_toml(recipe).get("task", {})
    return task.get("task") == "classify" and task.get("classifier", "transformer") in ("lstm", "mlp", "bow")


def data_workload(data_dir: str | Path, max_len: int, batch_size: int, key: bytes | None = None) -> dict[str, Any]:
    """Examples, classes, vocabulary and token lengths of a ``prepare --task classify`` folder (torch-free).
    An encrypted folder's training split is decrypted with ``key`` (``--key-file``), else $HWLM_DATA_KEY.

    The lengths are the training texts' tokens (the data's own tokenizer, cut at ``max_len``); ``steps_len``
    is the mean, over 200 seeded random batches, of a batch's longest text: the LSTM's steps per batch."""
    folder = Path(data_dir)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"--data {folder} has no readable manifest.json ({exc}); give a folder made by "
                        "`hwlm prepare --task classify`") from None
    if manifest.get("task") != "classify":
        raise PlanError(f"--data {folder} is not a classification folder; make one with `hwlm prepare --task classify`")
    out = {"examples": manifest["splits"]["train"]["examples"], "val_examples": manifest["splits"]["val"]["examples"],
           "n_classes": len(manifest["labels"]), "source": f"--data {folder}"}
    if manifest["input"] == "features":
        return out | {"n_features": manifest["n_features"]}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    from hwlm.data.classify import read_split  # torch-free; decrypts with hwlm.crypt (cryptography)

    texts = read_split(folder, "train", manifest, verify=False, key=key)[0]
    lengths = [min(max(1, len(e.ids)), max_len) for e in tok.encode_batch(texts, add_special_tokens=False)]
    rng = random.Random(0)
    steps = sum(max(rng.sample(lengths, min(batch_size, len(lengths)))) for _ in range(200)) / 200
    return out | {"vocab_size": manifest["vocab_size"], "mean_len": sum(lengths) / len(lengths), "steps_len": steps}


def job_from_recipe(recipe: str | Path, hardware: Any = None, *, data: str | Path | None = None,
                    key: bytes | None = None, **fields: Any) -> ClassifierJob:
    """The job a classifier recipe describes: its ``[train]`` batch, epochs and evaluation interval, its
    ``[task]`` shape, and the workload of ``data`` (else the recipe's ``[plan]`` table, else, for the MLP,
    scikit-learn's digits). ``key`` opens an encrypted ``data`` folder (else $HWLM_DATA_KEY). ``fields``
    override any :class:`ClassifierJob` field (``examples=``, ...)."""
    from hwlm.train.config import TrainConfig  # torch-free config dataclasses
    from hwlm.train.task_config import TaskConfig

    try:
        train = resolve(TrainConfig, file=recipe, section="train")
        task = resolve(TaskConfig, file=recipe, section="task")
        prep = load_toml(recipe).get("prepare", {})
    except ConfigError as exc:
        raise PlanError(str(exc)) from None
    if task.task != "classify" or task.classifier not in ("lstm", "mlp", "bow"):
        raise PlanError(f"recipe {recipe} trains no LSTM, MLP or bag-of-words classifier; price Transformers with "
                        "`hwlm plan train --model`")
    work = dict(load_toml(recipe).get("plan", {}))
    if data is not None:
        work.update(data_workload(data, task.max_len, train.batch_size, key))
    elif task.classifier == "mlp" and "examples" not in work:
        held = prep.get("val_fraction", 0.1) + prep.get("test_fraction", 0.1)
        work.update(DIGITS, examples=round(DIGITS["examples"] * (1 - held)),
                    val_examples=round(DIGITS["examples"] * prep.get("val_fraction", 0.1)))
    shape = ClassifierShape(kind=task.classifier, n_classes=int(work.get("n_classes", 2)),
                            vocab_size=int(work.get("vocab_size", prep.get("vocab_size", 8000))), embed=task.embed,
                            hidden=task.hidden, layers=task.layers, n_features=int(work.get("n_features", 0)),
                            buckets=task.buckets if task.classifier == "bow" and task.ngrams == 2 else 0)
    kw: dict[str, Any] = {"shape": shape, "hardware": hardware, "batch_size": train.batch_size, "epochs": task.epochs,
                          "max_steps": train.max_steps, "eval_interval": train.eval_interval,
                          "examples": int(work.get("examples", 0)), "val_examples": int(work.get("val_examples", 0)),
                          "mean_len": float(work.get("mean_len", 0.0)), "steps_len": float(work.get("steps_len", 0.0)),
                          "workload_source": str(work.get("source", f"the [plan] table of recipe {recipe}"))}
    kw.update({k: v for k, v in fields.items() if v is not None})
    if not kw["examples"]:
        raise PlanError(f"recipe {recipe} names no workload: pass --data DIR (from `hwlm prepare --task classify`) "
                        "or --examples N --mean-len L")
    return ClassifierJob(**kw)


@dataclass
class _Hw:
    dev: Device
    pri: Priors
    peak: float        # FLOP/s of the dense products (fp32)
    rnn_peak: float    # FLOP/s of the recurrent products (cuDNN may use TF32)
    bw: float          # bytes/s the kernels' traffic moves at
    over: float        # host seconds per kernel
    cpu: bool

    def kernel(self, n: float, flops: float, nbytes: float, peak: float | None = None) -> float:
        """Seconds of ``n`` kernels that together run ``flops`` and move ``nbytes`` (see the module docstring)."""
        comp, mem, host = flops / ((peak or self.peak) * self.pri.matmul_eff), nbytes / self.bw, n * self.over
        return comp + mem + host if self.cpu else max(comp, mem, host)


def _hardware(job: ClassifierJob, t: Terms) -> _Hw:
    dev = resolve_hardware(job.hardware, job.calibration)
    pri = priors_for(dev.kind, "fp32", dev.peak_flops("fp32"), dev.memory_bw)
    source = f"prior for {dev.kind}/fp32: {pri.source}"
    if dev.id == THIS_MACHINE:
        pri = replace(pri, matmul_eff=1.0, decode_bw_eff=1.0)
        source = "this machine's measured matmul and copy rates as peaks (efficiency 1)"
    cal = load_calibration(job.calibration)
    used = []
    for phase, name in (("matmul", "matmul_eff"), ("membw", "decode_bw_eff")) if cal is not None else ():
        e = cal.lookup(dev.id, "fp32", phase)
        if e is not None:
            pri = replace(pri, **{name: e.efficiency})
            used.append(f"{phase} {e.efficiency:.3g} ({e.source})")
    if used:
        source = "calibration: " + "; ".join(used)
    cpu = dev.kind == "cpu"
    peak = dev.peak_flops("fp32")
    rnn_peak = dev.flops.get("tf32", peak) if not cpu else peak
    t.add("matmul_eff", "achieved / peak of the products", pri.matmul_eff, "", source)
    t.add("peak_fp32", "dense fp32 peak", peak, "FLOP/s", dev.source("fp32"))
    if rnn_peak != peak:
        t.add("peak_recurrent", "TF32 peak: cuDNN's LSTM products", rnn_peak, "FLOP/s", TF32_CUDNN)
    bw = t.add("bandwidth", f"memory bandwidth {dev.memory_bw:.4g} x {pri.decode_bw_eff:.3g}",
               dev.memory_bw * pri.decode_bw_eff, "B/s", dev.source("memory_bw"))
    own = getattr(dev, "op_overhead_s", None)
    over = t.add("op_overhead", "host seconds per kernel", own or pri.op_overhead_s, "s",
                 dev.source("op_overhead_s") if own else OP_OVERHEAD_SOURCE)
    return _Hw(dev, pri, peak, rnn_peak, bw, over, cpu)


def _recurrence(job: ClassifierJob, hw: _Hw, t: Terms, backward: bool, examples: int) -> float:
    """Seconds of one batch's recurrent steps (LSTM only): thin products, gate arithmetic, per-step kernels."""
    s, steps = job.shape, job.steps_len
    rows, tokens = examples, examples * steps  # every row runs every step (padded batch)
    fwd_k, bwd_k = STEP_KERNELS["cpu" if hw.cpu else "gpu"]
    kernels = fwd_k + (bwd_k if backward else 0)
    products = 3 if backward else 1  # forward h @ W_hh; backward dgates @ W_hh and the W_hh gradient
    total = 0.0
    for n, h in s.lstm_layers():
        flops = products * 2 * rows * h * 4 * h * steps
        operands = products * (rows * h + h * 4 * h + rows * 4 * h) * 4.0 * steps
        gates = GATE_VALUES * h * tokens * 4.0 * (3 if backward else 1)
        total += hw.kernel(kernels * steps, flops, operands + gates, hw.rnn_peak)
    where = (f"{CPU_CELL}" if hw.cpu else APPLEYARD)
    return t.add("recurrent_time" if backward else "recurrent_forward_time",
                 f"{s.layers} layer(s) x {steps:.1f} steps x ({kernels} kernels, {products} thin product(s) of "
                 f"{rows:.1f} x {s.hidden} x {4 * s.hidden}, gate traffic {GATE_VALUES}h per token"
                 f"{' x 3' if backward else ''})", total, "s", where)


def _batch_time(job: ClassifierJob, hw: _Hw, t: Terms, examples: int, train: bool) -> float:
    """Seconds of one batch: forward (and backward and optimizer step when ``train``)."""
    s = job.shape
    tokens = examples * (job.steps_len if s.kind == "lstm" else job.mean_len)  # processed (the LSTM's padded)
    mult = 3.0 if train else 1.0
    p = classifier_param_count(s)
    flops = (classifier_train_flops if train else classifier_forward_flops)(s, tokens, examples)
    rec_flops = 0.0
    if s.kind == "lstm":
        rec_flops = mult * sum(2 * 4 * h * h for _, h in s.lstm_layers()) * tokens
    name = "step" if train else "infer_batch"
    counts = FIXED_KERNELS[s.kind]
    base, per_layer = counts[:2] if train else counts[2:]
    kernels = base + per_layer * s.layers
    # Traffic outside the recurrence: activations written and read, the embedding rows gathered; training
    # adds the dense embedding gradient and fused AdamW (weights, gradient, two moments: 28 B read + written).
    act = classifier_activation_bytes(s, tokens, examples) * (2.0 if train else 1.0)
    opt = p * (ADAM_FP32.total + 12.0) if train else 0.0
    dense = hw.kernel(kernels, flops - rec_flops, act + opt)
    t.add(f"{name}_dense_time", f"{kernels:.0f} kernels, {flops - rec_flops:.4g} FLOP of large products, "
          f"{act + opt:.4g} B (activations{', AdamW 28 B/param' if train else ''})", dense, "s")
    rec = _recurrence(job, hw, t, train, examples) if s.kind == "lstm" else 0.0
    per_row = COLLATE_OPS_PER_TEXT * hw.over if s.kind != "mlp" else s.n_features * PY_FLOAT_S
    host = t.add(f"{name}_collate_time", f"{examples} rows x {per_row:.3g} s (padding into tensors, on the host)",
                 examples * per_row, "s", "hwlm.train.classify.collate; feature rows: 20 ns per Python float assumed")
    return t.add(f"{name}_time", "dense + recurrent + collate", dense + rec + host, "s")


def estimate_classifier(job: ClassifierJob) -> ClassifierEstimate:
    """Predict training (and batched inference) of an LSTM, MLP or bag-of-words classifier on one device."""
    t, s = Terms(), job.shape
    hw = _hardware(job, t)
    dev = hw.dev
    params = int(t.add("params", f"hwlm.formulas.classifier_param_count({s.kind})", classifier_param_count(s), ""))
    steps = job.max_steps or math.ceil(job.epochs * job.examples / job.batch_size)
    steps = int(t.add("steps", f"{job.epochs:g} epochs x {job.examples} examples / batch {job.batch_size}", steps, "",
                      job.workload_source))
    tokens = steps * job.batch_size * (job.mean_len or s.n_features)
    flops = t.add("flops", "steps x classifier_train_flops(batch's real tokens): the useful work MFU counts",
                  steps * classifier_train_flops(s, job.batch_size * job.mean_len, job.batch_size), "FLOP")
    step = _batch_time(job, hw, t, job.batch_size, train=True)
    train_s = t.add("train_time", f"{steps} steps x step_time", steps * step, "s")
    batch = _batch_time(job, hw, t, job.infer_batch, train=False)
    evals = (steps // job.eval_interval if job.eval_interval else 0) + 1
    eval_s = t.add("eval_time", f"{evals} evaluations x {job.val_examples} val examples / {job.infer_batch} x "
                   "infer_batch_time", evals * math.ceil(job.val_examples / job.infer_batch) * batch, "s")
    time_s = t.add("time", "train_time + eval_time (checkpoints left out: a few MB)", train_s + eval_s, "s")
    mfu = t.add("mfu", f"flops / (train_time x peak {hw.peak:.4g})", flops / (train_s * hw.peak), "")
    act = classifier_activation_bytes(s, job.batch_size * (job.steps_len if s.kind == "lstm" else job.mean_len),
                                      job.batch_size)
    mem = t.add("memory", f"params x {ADAM_FP32.total:g} B (fp32 weights, gradients, AdamW) + activations {act:.4g} B",
                params * ADAM_FP32.total + act, "B", "hwlm.formulas.ADAM_FP32, classifier_activation_bytes")
    fits = mem <= dev.memory_bytes * USABLE_MEMORY_FRACTION
    hours = t.add("device_hours", "time / 3600", time_s / 3600, "h")
    energy, co2 = energy_terms(t, dev, hours, hw.pri.power_fraction, job.pue, job.grid_intensity, job.power_w)
    rate = job.price_per_hour if job.price_per_hour is not None else dev.price_per_hour
    price_source = "user price" if job.price_per_hour is not None else dev.sources.get("price_per_hour", "")
    cost = None if rate is None else t.add("cost", f"device_hours x ${rate}/h", hours * rate, "USD", price_source)
    ips = job.infer_batch / batch
    icost = None if rate is None else t.add("infer_cost_per_million", f"1e6 / {ips:.4g} examples/s x ${rate}/3600",
                                            1e6 / ips * rate / 3600, "USD")
    ienergy = None if energy is None else energy * 3.6e6 / time_s * (batch / job.infer_batch)
    notes = [f"workload: {job.examples:,} training examples"
             + (f", {job.mean_len:.1f} tokens on average, {job.steps_len:.1f} recurrent steps per batch"
                if s.kind == "lstm" else "") + f" ({job.workload_source})",
             "one device: hwlm trains classifiers in one process"]
    if s.kind == "lstm" and not hw.cpu:
        per = 4 * job.steps_len * s.layers
        notes.append(f"the LSTM is sequential: {per:.0f} dependent kernels per batch, so it is launch-bound on "
                     f"{dev.id} (larger batches cost almost nothing more per step)")
    if hw.cpu:
        notes.append("memory: the model's bytes; a CPU process also holds the torch runtime (~0.3 GB)")
        notes.append("a CPU's peak assumes every core busy; thin products of a few rows rarely spread over many "
                     "cores, so on a large CPU this is optimistic (checked on a 2-core one: docs/benchmarks.md)")
    notes += missing_figure_notes(dev.id, rate, energy)
    return ClassifierEstimate(
        kind=s.kind, hardware=dev.id, params=params, examples=job.examples, steps=steps, tokens=tokens, flops=flops,
        memory_bytes=mem, fits=fits, step_time_s=step, train_time_s=train_s, eval_time_s=eval_s, time_s=time_s,
        tokens_per_s=tokens / train_s, examples_per_s=steps * job.batch_size / train_s, mfu=mfu, energy_kwh=energy,
        co2_kg=co2, cost_usd=cost, infer_batch_s=batch, infer_examples_per_s=ips, infer_cost_per_million_usd=icost,
        infer_energy_per_example_j=ienergy, terms=list(t), notes=notes)
