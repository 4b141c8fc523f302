"""The training loop: ``train(cfg, model_cfg) -> TrainResult``.

One process (``hwlm train ...``) or one of several under ``torchrun`` (``hwlm train --nproc N``,
see :mod:`hwlm.train.parallel` and :mod:`hwlm.train.launch`): each rank draws its slice of a
global batch of ``batch_size * world_size`` windows, so the optimizer sees
``batch_size * world_size * grad_accum`` sequences per step and the logged loss is their mean.
Per optimizer step:

    lr <- warm-up/cosine schedule
    for each of grad_accum micro-batches:      # (B, T) token windows from TokenLoader
        forward under autocast, backward of loss / grad_accum   (DDP/FSDP: sync only on the last)
    if the loss is NaN/inf on any rank: skip the update (all ranks agree), count it;
        max_nonfinite in a row stop the run
    unscale (fp16) -> clip grad norm -> AdamW step -> zero grads
    every log_interval: log.jsonl + TensorBoard; every eval_interval: val loss;
    every ckpt_interval and at the end: an atomic checkpoint (see checkpoint.py)
    on SIGINT/SIGTERM (every rank agrees in the step's all-reduce): finish the step, checkpoint, return

Resuming (``resume=auto`` or a path) restores weights, optimizer, every RNG, the data
loader's position and the step counter, so a resumed CPU fp32 run is bit-identical to
one that never stopped (tests/test_train_resume.py checks this).

Here: the loop, its log window and :func:`train`. Building the run (device, strategy, key, resume,
model, optimizer, loader) is :mod:`hwlm.train.run`; one step, evaluation and saving :mod:`hwlm.train.step`.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from hwlm.formulas import mfu as model_flops_utilization
from hwlm.model import ModelConfig
from hwlm.train.config import TrainConfig
from hwlm.train.logs import RunLogger, info
from hwlm.train.optim import lr_at
from hwlm.train.parallel import current_world, mean_across, shutdown
from hwlm.train.progress import Progress
from hwlm.train.resolve import ResolvedRun, resolve_run
from hwlm.train.run import Run, peak_flops_for, setup_run
from hwlm.train.step import save_step, train_step, validation_loss

__all__ = ["TrainResult", "train", "build_model_config", "peak_flops_for"]


@dataclass
class TrainResult:
    """What a run did. ``mfu`` is None when the device's peak FLOP/s is unknown."""

    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    mfu: float | None
    train_loss: float | None
    val_loss: float | None
    run_dir: Path
    last_checkpoint: Path | None
    params: int
    precision: str
    device: str
    peak_flops: float | None
    world_size: int = 1
    strategy: str = "single"
    nonfinite_steps: int = 0
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM": stopped early, checkpoint written (see signals.py)


def build_model_config(cfg: TrainConfig, overrides: dict[str, Any] | None = None) -> ModelConfig | None:
    """The preset ``cfg.model`` with ``overrides`` (a [model] table, --model-* flags), sized to the data's
    vocabulary unless ``vocab_size`` is among them. None without overrides: :func:`train` builds the preset.
    (Kept for callers that pass a ModelConfig; :func:`hwlm.train.resolve.resolve_run` does it in one go.)"""
    if not overrides:
        ModelConfig.from_name(cfg.model, vocab_size=512)  # fail fast on an unknown preset name
        return None
    return resolve_run(cfg, overrides).model


def _progress_fraction(run: Run) -> float:
    fracs = [run.step / run.total_steps] if run.total_steps else []
    if run.cfg.time_budget:
        fracs.append(run.elapsed / run.cfg.time_budget)
    return min(max(fracs, default=0.0), 1.0)


def _done(run: Run, stop_at_step: int | None, elapsed: float) -> str | None:
    """'end' when the run is over, 'pause' at ``stop_at_step`` (checkpoint only, like a preemption), else None."""
    if run.total_steps is not None and run.step >= run.total_steps:
        return "end"
    if run.cfg.time_budget is not None and elapsed >= run.cfg.time_budget:
        return "end"
    return "pause" if stop_at_step is not None and run.step >= stop_at_step else None


def _eta(run: Run, steps_per_s: float) -> float | None:
    etas = []
    if run.total_steps and steps_per_s > 0:
        etas.append((run.total_steps - run.step) / steps_per_s)
    if run.cfg.time_budget:
        etas.append(max(run.cfg.time_budget - run.elapsed, 0.0))
    return min(etas) if etas else None


@dataclass
class _Window:
    """Sums since the last log line (loss stays on the device: reading it forces a sync).
    ``loss`` sums the finite steps only, ``finite`` counts them."""

    loss: torch.Tensor
    steps: int = 0
    finite: int = 0
    seconds: float = 0.0
    tokens: int = 0


def _log_line(run: Run, win: _Window, lr: float, bar: Progress) -> dict[str, Any]:
    """The log record for the window that just ended; resets the window."""
    # Equal-sized batches on every rank, so the mean of rank means is the global batch mean.
    loss = mean_across(float(win.loss) / win.finite, run.world) if win.finite else float("nan")
    tps = win.tokens / max(win.seconds, 1e-9)
    mfu = model_flops_utilization(tps, run.flops_per_token, run.peak)
    bar.update(run.step, loss, tps, mfu, _eta(run, win.steps / max(win.seconds, 1e-9)))
    win.loss.zero_()
    win.steps, win.finite, win.seconds, win.tokens = 0, 0, 0.0, 0
    record = {"step": run.step, "tokens": run.tokens, "loss": loss, "lr": lr, "tokens_per_s": tps, "mfu": mfu}
    return record | ({"nonfinite_steps": run.nonfinite.total} if run.nonfinite.total else {})


def _loop(run: Run, logger: RunLogger, bar: Progress, stop_at_step: int | None,
          say: Callable[[str], None]) -> tuple[float | None, float | None]:
    """Step until done; returns the last logged train loss and the last val loss."""
    cfg = run.cfg
    win = _Window(loss=torch.zeros((), device=run.device))
    train_loss = val_loss = None
    finishing = _done(run, stop_at_step, run.elapsed)
    while not finishing:
        t0 = time.perf_counter()
        lr = lr_at(run.step, cfg, _progress_fraction(run), run.total_steps)
        loss, finite = train_step(run, lr)
        run.step += 1
        run.tokens += run.tokens_per_step
        # Every rank is here (they agreed on ``finite``), so the collective in mean_across is safe.
        value = float("nan") if finite else mean_across(float(loss), run.world)
        run.nonfinite.record(finite, run.step, value, run.last_ckpt, say)
        if finite:
            win.loss += loss
            win.finite += 1
        win.steps += 1
        win.tokens += run.tokens_per_step
        finishing = _done(run, stop_at_step, run.elapsed + time.perf_counter() - t0)
        if finishing is None and run.stop_signal:
            finishing = "signal"  # no evaluation: a scheduler's grace period is short
        log_now = run.step % cfg.log_interval == 0 or finishing == "end"
        if log_now:
            float(win.loss)  # wait for the device so that the step's time is honest
        dt = time.perf_counter() - t0
        win.seconds += dt
        run.train_seconds += dt
        record: dict[str, Any] = _log_line(run, win, lr, bar) if log_now else {}
        if record.get("loss") == record.get("loss"):  # not NaN: a window with a finite step
            train_loss = record.get("loss", train_loss)
        if (cfg.eval_interval and run.step % cfg.eval_interval == 0) or finishing == "end":
            val_loss = validation_loss(run)
            record = (record or {"step": run.step, "tokens": run.tokens}) | {"val_loss": val_loss}
        if record:
            logger.log(record)
        run.elapsed += time.perf_counter() - t0  # before saving, so a resumed time budget is right
        if (cfg.ckpt_interval and run.step % cfg.ckpt_interval == 0) or finishing:
            t_save = time.perf_counter()
            save_step(run)
            run.elapsed += time.perf_counter() - t_save
    return train_loss, val_loss


def train(cfg: TrainConfig | ResolvedRun, model_cfg: ModelConfig | None = None, *, stop_at_step: int | None = None,
          say: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) a model on ``cfg.data``, writing the run folder ``cfg.out``.

    ``cfg`` is a :class:`~hwlm.train.resolve.ResolvedRun` (what ``hwlm train`` passes) or a
    :class:`TrainConfig`, resolved here with ``model_cfg`` (default: the preset ``cfg.model`` sized to
    the data's vocabulary).
    ``stop_at_step`` pauses the run after that step (a checkpoint is written) as a
    preemption would, leaving the schedule as if it ran to the end: used to test resuming.
    ``say`` receives one-line progress notes (default: stderr on rank 0).
    A SIGINT or SIGTERM while stepping ends the run after the current step with a checkpoint;
    the result's ``stopped_by`` then names the signal (see :mod:`hwlm.train.signals`).
    """
    if say is None:
        say = info if current_world().is_main else (lambda _msg: None)  # other ranks stay quiet
    with contextlib.ExitStack() as stack:
        resolved = cfg if isinstance(cfg, ResolvedRun) else resolve_run(cfg, model_cfg=model_cfg)
        cfg = resolved.train
        run, resume_step = setup_run(resolved, say, stack)
        logger = RunLogger(cfg.out, resume_step, cfg.tensorboard, enabled=run.world.is_main)
        bar = Progress(run.total_steps, run.step, cfg.progress and run.world.is_main)
        start_step = run.step
        run.signals.announce = run.world.is_main
        try:
            with run.signals:
                train_loss, val_loss = _loop(run, logger, bar, stop_at_step, say)
        finally:
            bar.close()
            logger.close()
        if run.step == start_step and val_loss is None:
            val_loss = validation_loss(run)  # nothing left to train (resumed a finished run): still report val loss
    # Only on success: after an error the process exits, and tearing down a group that other ranks
    # still wait in can block.
    shutdown(run.world)
    tps = (run.tokens / run.train_seconds) if run.train_seconds > 0 else 0.0
    mfu = model_flops_utilization(tps, run.flops_per_token, run.peak)
    return TrainResult(steps=run.step, tokens=run.tokens, seconds=run.elapsed, tokens_per_s=tps, mfu=mfu,
                       train_loss=train_loss, val_loss=val_loss, run_dir=cfg.out, last_checkpoint=run.last_ckpt,
                       params=run.run_config["runtime"]["params"], precision=run.precision, device=run.device,
                       peak_flops=run.peak, world_size=run.world.world_size, strategy=run.strategy,
                       nonfinite_steps=run.nonfinite.total,
                       stopped_by=signal.Signals(run.stop_signal).name if run.stop_signal else None)
