"""``hwlm quickstart`` (what ``make demo`` runs): the whole flow on this machine in a few minutes.

    hardware summary -> prepare the built-in corpus (cached) -> quick matmul peak -> train a
    small model for a time budget -> evaluate -> generate a sample -> summary table

The corpus is Python's own ``pydoc_data`` topics (in every Python install: nothing is
downloaded). The summary puts the validation loss beside the *unigram entropy* of the
training tokens, the loss of a model that knows only token frequencies: a model that has
learned anything from context lands clearly below it.

Artifacts live under ``--out`` (default ``runs/quickstart``): ``data/`` (reused when its
manifest matches the settings) and ``train/`` (a fresh run each time).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from hwlm.config import option, to_dict
from hwlm.errors import ConfigError

__all__ = ["QuickstartConfig", "QuickstartResult", "quickstart", "render_summary", "unigram_entropy", "prepare_corpus"]


@dataclass
class QuickstartConfig:
    """Settings of the demo; the defaults finish in about two minutes on two CPU cores."""

    out: Path = option(Path("runs/quickstart"), "folder for data/ and train/")
    device: str = option("auto", "auto, cpu, cuda, cuda:N, mps or xla")
    vocab_size: int = option(2048, "BPE vocabulary trained on the corpus")
    model: str = option("tiny", "model preset")
    batch_size: int = option(16, "sequences per step")
    dropout: float = option(0.0, "dropout while training (the corpus is small: a long run can overfit)")
    lr: float = option(2e-3, "peak learning rate")
    warmup: int = option(50, "warm-up steps")
    time_budget: float | None = option(100.0, "seconds of training")
    max_steps: int | None = option(None, "stop after this many steps (first of this and the time budget)")
    eval_interval: int = option(250, "evaluate every N steps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option("auto", "compute precision")
    prompt: str = option("The for statement", "prompt of the generated sample")
    max_new_tokens: int = option(60, "tokens in the generated sample")
    seed: int = option(1337, "seed of training and sampling")
    progress: bool = option(True, "show the training progress bar")
    calibration: Path | None = option(None, "this-machine calibration for the planner's prediction (default: "
                                      "runs/bench/calibration-this-machine.json when it exists)")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.time_budget is None and self.max_steps is None:
            raise ConfigError("quickstart needs time_budget or max_steps to end the run")
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens is {self.max_new_tokens}; it must be zero or more")


@dataclass
class QuickstartResult:
    """Every number of the summary table."""

    hardware: str
    device: str
    precision: str
    params: int
    steps: int
    tokens: int
    train_seconds: float
    total_seconds: float
    tokens_per_s: float
    peak_flops: float | None
    mfu: float | None
    val_loss: float
    perplexity: float
    bits_per_byte: float
    unigram_entropy: float
    peak_memory_bytes: int | None
    sample: str
    data_dir: Path
    run_dir: Path
    data_cached: bool
    predicted: dict[str, Any] | None = None  # the planner's prediction for this run (issue 4)
    train_memory_bytes: int | None = None  # peak during training minus the baseline just before it (see hwlm.bench.measure.MemoryWatch)
    step_seconds: float | None = None      # seconds inside training steps (tokens / tokens_per_s): no eval, no save
    window_tokens_per_s: tuple[float, float] | None = None  # slowest and fastest logged window of steps
    notes: list[str] = field(default_factory=list)


def unigram_entropy(data_dir: Path) -> float:
    """Entropy in nats/token of the train split's token frequencies: the loss of the best
    context-free model, a baseline any trained model must beat."""
    import numpy as np

    from hwlm.data.shards import load_manifest, shard_arrays

    manifest = load_manifest(data_dir)
    counts = np.zeros(manifest["vocab_size"], dtype=np.int64)
    for arr in shard_arrays(data_dir, manifest, "train"):
        counts += np.bincount(arr, minlength=len(counts))[: len(counts)]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _hardware(say: Callable[[str], None]) -> str:
    try:
        from hwlm.hw import detect, render
    except ImportError:
        return "unknown (hwlm.hw is not available)"
    info = detect()
    for line in render(info).splitlines():
        say("  " + line)
    gpu = f", {info.gpus[0].name}" if info.gpus else ""
    return f"{info.cpu.model} ({info.cpu.logical_cores} logical cores){gpu}"


def prepare_corpus(cfg: QuickstartConfig) -> tuple[Path, bool]:
    """The built-in corpus, prepared under out/data unless a matching preparation is there; (folder, reused)."""
    from hwlm.data import PrepareConfig, load_manifest, prepare
    from hwlm.errors import DataError

    pcfg = PrepareConfig(out=cfg.out / "data", vocab_size=cfg.vocab_size, seed=0)
    try:
        if load_manifest(pcfg.out).get("config") == to_dict(pcfg):
            return pcfg.out, True
    except DataError:
        pass  # nothing usable there yet
    prepare(pcfg)
    return pcfg.out, False


def _peak_memory(device: str) -> int | None:
    """Peak memory of this process: GPU allocator peak on CUDA, else peak resident set size."""
    if device.startswith("cuda"):
        import torch
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
        import sys
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


def _calibration_file(cfg: QuickstartConfig) -> Path | None:
    if cfg.calibration is not None:
        return Path(cfg.calibration)
    default = Path("runs/bench/calibration-this-machine.json")
    return default if default.is_file() else None


def _per_step(e: Any, steps: int) -> str:
    """The prediction's time terms per step, largest first, for the summary."""
    names = {"matmul_time": "matmul", "elementwise_time": "element-wise", "gemm_memory_time": "thin-GEMM traffic",
             "logits_time": "logits", "autocast_cast_time": "casts", "kernel_overhead_time": "kernel overhead"}
    parts = [(t.value / steps, label) for t in e.terms for key, label in names.items() if t.name == key]
    return ", ".join(f"{label} {1e3 * v:.3g} ms" for v, label in sorted(parts, reverse=True))


def _windows(run_dir: Path) -> tuple[float, float] | None:
    """Slowest and fastest tokens/s over the logged windows of steps (the spread other processes cause)."""
    from hwlm.train.logs import read_log

    rates = [r["tokens_per_s"] for r in read_log(run_dir) if r.get("tokens_per_s")]
    return (min(rates), max(rates)) if rates else None


def _planner_prediction(cfg: QuickstartConfig, result: Any) -> dict[str, Any] | None:
    """ISSUE 4: what ``hwlm.plan`` predicts for this exact run on this machine.

    The planner has no catalog entry for this machine, so its device is built from numbers
    measured here, each the fastest of a few samples (other processes only add time):
    the large-matmul rate (so large products run at efficiency 1), the 64 MiB copy bandwidth,
    the copy bandwidth at the size of the step's activations (the backward reads what the forward
    saved, so a small model's element-wise work runs from cache), the host seconds per eager kernel, and the detected memory. From these the planner's
    physics gives the step: FLOPs, activation traffic, thin-GEMM operand traffic, the logits'
    softmax passes, autocast casts and kernel overhead (``hwlm plan train --explain`` prints the
    same terms). A this-machine calibration (``--calibration``, or
    ``runs/bench/calibration-this-machine.json``) replaces the priors where it has entries. The
    run's model and batch come from its ``config.json``; time and tokens/s are for the training
    steps alone (evaluation and the checkpoint are left out on both sides); memory is the training
    state (weights, gradients, Adam moments, activations, logits), compared with what training
    added to the process (:class:`hwlm.bench.measure.MemoryWatch`).
    """
    import json

    from hwlm.bench.measure import copy_bandwidth, kernel_seconds
    from hwlm.errors import HwlmError
    from hwlm.plan import estimate_training
    from hwlm.plan.machine import machine_device
    from hwlm.plan.models import Model

    if not result.peak_flops or not result.steps:
        return None
    try:
        from hwlm.hw import detect
        from hwlm.model import ModelConfig

        run = json.loads((result.run_dir / "config.json").read_text())
        mcfg = ModelConfig(**run["model"])
        batch = int(run["train"]["batch_size"])
        info = detect()
        gpu = result.device.startswith("cuda") and info.gpus
        mem = info.gpus[0].memory_bytes if gpu else (info.memory_bytes or 0)
        model = Model(name=cfg.model, spec=mcfg.to_arch(), source="run config.json", model_type="hwlm",
                      seq_len=mcfg.block_size)
        cal = _calibration_file(cfg)

        def estimate(act_bw: float | None = None) -> Any:
            dev = machine_device({result.precision: peak}, bw, mem, name=result.hardware, kind="gpu" if gpu else "cpu",
                                 source="measured by hwlm quickstart", op_overhead_s=per_kernel, act_bw=act_bw)
            return estimate_training(model, float(result.tokens), dev, 1, precision=result.precision,
                                     seq_len=mcfg.block_size, global_batch=batch, tp=1, pp=1, zero_stage=0,
                                     recompute="none", micro_batch=batch, find_smallest=False, calibration=cal,
                                     autocast=result.precision != "fp32")
        peak, bw = result.peak_flops, copy_bandwidth(result.device)  # the MFU line's peak: one number in the summary
        per_kernel = kernel_seconds(result.device)
        # The backward reads what the forward saved a whole pass earlier, so element-wise traffic streams
        # through the step's activation memory: measure the copy bandwidth at that size (cache or DRAM).
        acts = estimate().memory.activations
        e = estimate(copy_bandwidth(result.device, min(int(acts // 4), 16 * 2**20)))
    except (HwlmError, OSError, KeyError, ValueError, TypeError, ImportError) as exc:
        result.notes.append(f"planner prediction unavailable: {exc}")
        return None
    seconds = e.time_s - e.overhead_time_s
    act_size = min(int(e.memory.activations // 4), 16 * 2**20) * 4
    how = (f"calibration {cal}" if cal else "no calibration") + f"; measured {result.precision} matmul " \
        f"{peak:.3g} FLOP/s, copy {bw:.3g} B/s (64 MiB) and at the activations' size ({act_size / 2**20:.3g} MiB), " \
        f"{1e6 * per_kernel:.2g} us per kernel"
    return {"seconds": seconds, "tokens_per_s": result.tokens / seconds, "memory_bytes": e.memory.total,
            "memory_parts": {"weights": e.memory.weights, "gradients": e.memory.gradients,
                             "optimizer": e.memory.optimizer, "activations": e.memory.activations},
            "mfu": e.mfu, "peak_flops": peak, "efficiencies": f"planner priors for kind {'gpu' if gpu else 'cpu'} ({how})",
            "per_step": _per_step(e, result.steps), "layout": e.layout.describe()}


def _matmul_peak(device: str, precision: str) -> float | None:
    """The machine's matmul peak for both the MFU line and the planner's prediction: the fastest of several large
    products (:func:`hwlm.bench.measure.matmul_peak`, as ``hwlm bench peak`` and the planner take it), not the
    median that training's own probe keeps, which a busy moment on a shared machine pulls down; None when it
    cannot be measured (MFU then shows n/a, never a guess)."""
    from hwlm.bench.measure import matmul_peak

    try:
        return matmul_peak(device, precision)
    except Exception:  # a failed probe only costs the MFU line and the prediction (RuntimeError, OOM, ...)
        return None


def _train(cfg: QuickstartConfig, data_dir: Path, peak: float | None, say: Callable[[str], None]) -> Any:
    from hwlm.train.config import TrainConfig
    from hwlm.train.loop import build_model_config, train

    run_dir = cfg.out / "train"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # quickstart's own folder: every demo is a fresh run
    tcfg = TrainConfig(data=data_dir, out=run_dir, model=cfg.model, batch_size=cfg.batch_size, lr=cfg.lr,
                       min_lr=cfg.lr / 10, warmup=cfg.warmup, time_budget=cfg.time_budget, max_steps=cfg.max_steps,
                       eval_interval=cfg.eval_interval, eval_batches=10, log_interval=10, ckpt_interval=0,
                       precision=cfg.precision, seed=cfg.seed, device=cfg.device, progress=cfg.progress,
                       peak_flops=peak, weight_decay=0.1)
    model_cfg = build_model_config(tcfg, {"dropout": cfg.dropout}) if cfg.dropout else None
    return train(tcfg, model_cfg, say=say)


def quickstart(cfg: QuickstartConfig, say: Callable[[str], None] = print) -> QuickstartResult:
    """Run the demo; ``say`` gets each step's headline and details."""
    from hwlm.bench.measure import MemoryWatch
    from hwlm.device import select_device
    from hwlm.evaluate import EvalConfig, evaluate
    from hwlm.train.load import load_model, stream_text

    t0 = time.perf_counter()
    say("[1/6] hardware")
    hardware = _hardware(say)
    say(f"[2/6] preparing the built-in corpus (Python's pydoc topics) in {cfg.out / 'data'}")
    data_dir, cached = prepare_corpus(cfg)
    entropy = unigram_entropy(data_dir)
    say(f"  {'reused the cached preparation' if cached else 'prepared'}; unigram entropy of the train split "
        f"{entropy:.4f} nats/token (a model that learns no context scores about this)")
    device = select_device(cfg.device).device
    guess = "bf16" if device.startswith("cuda") and cfg.precision in ("auto", "bf16") else (
        "fp32" if cfg.precision == "auto" else cfg.precision)
    say(f"[3/6] measuring the {guess} matmul peak on {device}")
    peak = _matmul_peak(device, guess)
    say(f"  {peak / 1e9:,.1f} GFLOP/s" if peak else "  unknown: MFU will show n/a")
    say(f"[4/6] training a {cfg.model} model" + (f" for {cfg.time_budget:.0f} s" if cfg.time_budget else ""))
    with MemoryWatch(device) as watch:
        tr = _train(cfg, data_dir, peak, say)
    mfu, peak_used = tr.mfu, peak
    if tr.precision != guess:  # auto picked another precision: measure the matching peak
        peak_used = _matmul_peak(device, tr.precision)
        mfu = tr.mfu * peak / peak_used if (tr.mfu and peak and peak_used) else None
    say("[5/6] evaluating on the whole val split")
    ev = evaluate(EvalConfig(run=tr.run_dir, device=cfg.device))
    say("[6/6] generating a sample")
    loaded = load_model(tr.run_dir, device)
    sample = "".join(stream_text(loaded, cfg.prompt, cfg.max_new_tokens, temperature=0.8, top_k=50, seed=cfg.seed))
    result = QuickstartResult(
        hardware=hardware, device=device, precision=tr.precision, params=tr.params, steps=tr.steps,
        tokens=tr.tokens, train_seconds=tr.seconds, total_seconds=time.perf_counter() - t0,
        tokens_per_s=tr.tokens_per_s, peak_flops=peak_used, mfu=mfu, val_loss=ev.loss, perplexity=ev.perplexity,
        bits_per_byte=ev.bits_per_byte, unigram_entropy=entropy, peak_memory_bytes=_peak_memory(device),
        sample=cfg.prompt + sample, data_dir=data_dir, run_dir=tr.run_dir, data_cached=cached,
        train_memory_bytes=watch.added, step_seconds=tr.tokens / tr.tokens_per_s if tr.tokens_per_s else None,
        window_tokens_per_s=_windows(tr.run_dir))
    result.predicted = _planner_prediction(cfg, result)
    if ev.loss >= entropy:
        result.notes.append("val loss is not below the unigram entropy: the model learned no context; "
                            "train longer (--time-budget) or check the data")
    return result


def render_summary(r: QuickstartResult) -> str:
    """The summary table as text."""
    mfu = "n/a (peak unknown)" if r.mfu is None else f"{100 * r.mfu:.2f}% of {r.peak_flops / 1e9:,.1f} GFLOP/s measured"
    mem = "unknown" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / 2**20:,.0f} MiB"
    pred = r.predicted or {}

    def versus(measured: float | None, key: str, fmt: Callable[[float], str]) -> str:
        if key not in pred:
            return "predicted n/a"
        off = f" ({measured / pred[key] - 1:+.0%} vs prediction)" if measured else ""
        return f"predicted {fmt(pred[key])}{off}"
    pred_time = versus(r.step_seconds, "seconds", lambda v: f"{v:.1f} s")
    pred_mem = versus(r.train_memory_bytes, "memory_bytes", lambda v: f"{v / 2**20:,.1f} MiB")
    pred_tps = versus(r.tokens_per_s, "tokens_per_s", lambda v: f"{v:,.0f} tokens/s")
    steps = "n/a" if r.step_seconds is None else f"{r.step_seconds:.1f} s"
    added = "unknown" if r.train_memory_bytes is None else f"{r.train_memory_bytes / 2**20:,.1f} MiB"
    spread = "" if not r.window_tokens_per_s else \
        f" (10-step windows {r.window_tokens_per_s[0]:,.0f}-{r.window_tokens_per_s[1]:,.0f})"
    margin = r.unigram_entropy - r.val_loss
    rows = [
        ("hardware", f"{r.hardware}; ran on {r.device}, {r.precision}"),
        ("parameters", f"{r.params:,}"),
        ("tokens seen", f"{r.tokens:,} in {r.steps:,} steps"),
        ("train time", f"{r.train_seconds:.1f} s, with evaluation and checkpoint"),
        ("train steps", f"{steps} measured | {pred_time}"),
        ("throughput", f"{r.tokens_per_s:,.0f} tokens/s measured{spread} | {pred_tps}"),
        ("train memory", f"{added} measured (peak minus baseline before the model) | {pred_mem}"),
        ("peak memory", f"{mem} (whole process, runtime included)"),
        ("MFU", mfu),
        ("val loss", f"{r.val_loss:.4f} nats/token vs unigram entropy {r.unigram_entropy:.4f} "
                     f"({'below by' if margin > 0 else 'ABOVE by'} {abs(margin):.3f})"),
        ("perplexity", f"{r.perplexity:.2f}"),
        ("bits per byte", f"{r.bits_per_byte:.4f}"),
        ("total time", f"{r.total_seconds:.1f} s"),
        ("data", f"{r.data_dir}{' (cached)' if r.data_cached else ''}"),
        ("run", f"{r.run_dir} (log.jsonl, tb/, checkpoints/)"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["", "quickstart summary", "-" * 60]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    lines += ["-" * 60, "sample:", r.sample, ""]
    if "efficiencies" in pred:
        lines.append(f"prediction: hwlm.plan with {pred['efficiencies']}")
        lines.append(f"predicted per step: {pred['per_step']}")
        parts = pred["memory_parts"]
        lines.append("predicted train memory: " + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in parts.items())
                     + " (peak: weights + optimizer + the larger of gradients and activations, which one process "
                       "stepping once per batch never holds together); measured: "
                     + ("CUDA allocator peak above the allocation before training" if r.device.startswith("cuda")
                        else "peak anonymous resident memory during training minus its value before"))
        if not r.device.startswith("cuda"):
            lines.append("note: the prediction counts tensors; on a CPU hwlm keeps freed memory in its heap for speed "
                         "(no page faults on each step's tensors), and the resident heap ends above the tensors "
                         "(15-30% after a few steps, more over a long run: docs/benchmarks.md, training memory)")
    if r.window_tokens_per_s and r.window_tokens_per_s[1] > 1.5 * r.window_tokens_per_s[0]:
        lines.append(f"note: the step rate varied {r.window_tokens_per_s[1] / r.window_tokens_per_s[0]:.1f}x "
                     "between 10-step windows, more than steady training does: other processes were probably "
                     "sharing this machine, so the measured mean understates it; the prediction is for the "
                     "machine alone")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)

