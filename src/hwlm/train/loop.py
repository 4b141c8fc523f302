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
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hwlm.config import to_dict
from hwlm.device import select_device
from hwlm.errors import ConfigError, HwlmError, ResourceError
from hwlm.formulas import mfu as model_flops_utilization
from hwlm.formulas import train_flops_per_token
from hwlm.io import atomic_write_json, folder_lock
from hwlm.model import ModelConfig
from hwlm.train import checkpoint as ckpt_io
from hwlm.train.config import TrainConfig
from hwlm.train.faults import NonFiniteGuard, poisoned
from hwlm.train.logs import RunLogger, info
from hwlm.train.optim import build_optimizer, lr_at
from hwlm.train.launch import choose_strategy, training_bytes
from hwlm.train.parallel import (World, agree, broadcast_object, current_world, grad_sync,
                                 init_distributed, mean_across, shard_model, shutdown, wrap_model)
from hwlm.train.progress import Progress
from hwlm.train.runtime import autocast, choose_precision, keep_freed_memory, loss_sums, seed_everything
from hwlm.train.resolve import ResolvedRun, resolve_run
from hwlm.train.signals import StopSignals, agree_step

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


def peak_flops_for(device: str, precision: str) -> float | None:
    """Measured matmul peak in FLOP/s for MFU, or None when it cannot be measured (never guessed)."""
    try:
        from hwlm.train.runtime import quick_matmul_peak
    except ImportError:
        return None
    try:
        return quick_matmul_peak(device, precision)
    except Exception as exc:  # a failed probe only costs the MFU column
        info(f"could not measure the matmul peak on {device} ({exc}); MFU will show n/a")
        return None


def _horizon(cfg: TrainConfig, tokens_per_step: int) -> int | None:
    """Steps until max_steps or max_tokens, whichever is first (None: only a time budget)."""
    limits = []
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if cfg.max_tokens is not None:
        limits.append(-(-cfg.max_tokens // tokens_per_step))
    return min(limits) if limits else None


@dataclass
class _Run:
    """Everything the loop body needs, built once by :func:`_setup`."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    world: World
    device: str
    model: torch.nn.Module      # the raw module: what checkpoints save
    step_model: torch.nn.Module  # what the step calls (compiled / wrapped)
    optimizer: torch.optim.Optimizer
    scaler: Any
    loader: Any
    precision: str
    run_config: dict[str, Any]
    tokenizer_file: Path
    total_steps: int | None
    tokens_per_step: int
    flops_per_token: float
    peak: float | None
    strategy: str = "single"   # single | ddp | fsdp
    step: int = 0
    tokens: int = 0
    nonfinite: NonFiniteGuard = field(default_factory=lambda: NonFiniteGuard(5))  # skipped NaN/inf steps
    elapsed: float = 0.0        # wall seconds inside the loop, over all resumes
    train_seconds: float = 0.0  # seconds in training steps only (throughput)
    last_ckpt: Path | None = None
    signals: StopSignals = field(default_factory=StopSignals)
    stop_signal: int = 0        # the signal every rank agreed to stop on (0: none)
    key: bytes | None = field(default=None, repr=False)  # data/checkpoint key (--key-file): never logged or saved


def _strategy(cfg: TrainConfig, world: World, model_cfg: ModelConfig, device: str) -> tuple[str, str]:
    """How the ranks share the model: single (no torchrun, or one rank and auto), ddp or fsdp."""
    if not world.distributed:
        return "single", "one process"
    if world.world_size == 1 and cfg.strategy == "auto":
        return "single", "one process under torchrun: nothing to split"
    memory = torch.cuda.get_device_properties(device).total_memory if device.startswith("cuda") else None
    need = training_bytes(model_cfg.to_arch(), cfg.batch_size, model_cfg.block_size, recompute=cfg.recompute)
    return choose_strategy(cfg.strategy, need, memory)


def _agreed_resume(cfg: TrainConfig, world: World, say: Callable[[str], None],
                   key: bytes | None = None) -> Path | None:
    """Rank 0 picks the checkpoint to resume and every rank takes the same one."""
    found, err = None, None
    if world.is_main:
        try:
            found = ckpt_io.resume_checkpoint(cfg.out, cfg.resume, say, key)
        except HwlmError as exc:
            err = exc
    agree(err, world, "rank 0 could not choose a checkpoint to resume; see its message")
    found = broadcast_object(str(found) if found else None, world)
    if found is not None and not Path(found).is_dir():
        raise ConfigError(f"checkpoint {found} is not visible on rank {world.rank}: put the run folder (--out) on "
                          "storage every node sees")
    return Path(found) if found else None


def _precision(cfg: TrainConfig, saved: dict[str, Any] | None, device_type: str, model: torch.nn.Module,
               model_cfg: ModelConfig, world: World) -> tuple[str, str]:
    if saved is not None:
        return saved["runtime"]["precision"], "kept from the checkpoint being resumed"
    pc = choose_precision(cfg.precision, device_type, model, cfg.batch_size, model_cfg.block_size) \
        if world.is_main else None
    pc = broadcast_object(pc, world)  # a timed trial may come out differently per rank: rank 0 decides
    return pc.name, pc.reason


def _key(cfg: TrainConfig, manifest: dict[str, Any], strategy: str, say: Callable[[str], None]) -> bytes | None:
    """The key of ``--key-file`` (or, for --encrypt, $HWLM_DATA_KEY); None leaves readers to $HWLM_DATA_KEY."""
    from hwlm.crypt import load_key

    if cfg.encrypt and strategy == "fsdp":
        raise ConfigError("--encrypt does not cover FSDP's sharded checkpoints (dcp/) yet: use --strategy ddp "
                          "or one process")
    from hwlm.data.shards import data_key

    key = load_key(cfg.key_file) if cfg.key_file is not None or cfg.encrypt else None
    data_key(cfg.data, manifest, key)  # a wrong or missing data key stops here, before the model is built
    if manifest.get("encryption") and not cfg.encrypt:
        say("note: the data is encrypted but this run's checkpoints will not be: add --encrypt to encrypt them")
    return key


def _lock_out(cfg: TrainConfig, world: World, stack: contextlib.ExitStack) -> None:
    """Rank 0 holds the run folder's lock for the whole run, for every rank (see hwlm.io.folder_lock)."""
    err = None
    if world.is_main:
        try:
            stack.enter_context(folder_lock(cfg.out, what="hwlm train"))
        except HwlmError as exc:
            err = exc
    agree(err, world, f"rank 0 could not lock the run folder {cfg.out}; see its message")


def _setup(resolved: ResolvedRun, say: Callable[[str], None],
           stack: contextlib.ExitStack) -> tuple[_Run, int | None]:
    """Build everything the loop needs; returns the run and the step resumed from (None: fresh).
    The run folder's lock joins ``stack``, so it is held until the caller leaves it."""
    from hwlm.data import TokenLoader
    from hwlm.model import Transformer

    cfg, model_cfg = resolved.train, resolved.model
    if not cfg.horizon_given:
        raise ConfigError("the run has no end: set max_steps, max_tokens or time_budget")
    choice = select_device(cfg.device)
    world = init_distributed(choice.type)
    device = world.device if world.distributed else choice.device
    _lock_out(cfg, world, stack)  # before the resume decision: a second writer must not read a moving folder
    say(f"device {device}: {choice.reason}")
    if choice.type == "cpu" and keep_freed_memory():
        say("cpu allocator: freed memory kept for reuse across steps (no page faults on each step's tensors)")
    strategy, why = _strategy(cfg, world, model_cfg, device)
    if world.distributed:
        say(f"{world.world_size} process(es), strategy {strategy}: {why}")
    key = _key(cfg, resolved.manifest, strategy, say)
    resume = _agreed_resume(cfg, world, say, key)
    saved = ckpt_io.read_json(resume / "config.json") if resume is not None else None
    if saved is not None:
        if not (world.is_main and cfg.resume == "auto"):  # auto: rank 0 verified it while choosing it
            ckpt_io.verify_checkpoint(resume)
        ckpt_io.check_same_model(resume, saved.get("model", {}), to_dict(model_cfg))

    seed_everything(cfg.seed)
    model = Transformer(model_cfg).to(device)
    model.recompute = cfg.recompute
    precision, why = _precision(cfg, saved, choice.type, model, model_cfg, world)
    say(f"precision {precision}: {why}")
    if strategy == "fsdp":
        if precision == "fp16":
            raise ConfigError("precision fp16 is not supported with FSDP (its loss scaler is not sharded); use bf16")
        shard_model(model, precision, choice.type)  # before the optimizer: it must hold the sharded parameters
    optimizer, opt_text = build_optimizer(model, cfg, choice.type)
    say(opt_text)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    loader = TokenLoader(cfg.data, "train", cfg.batch_size, model_cfg.block_size, seed=cfg.seed,
                         rank=world.rank, world_size=world.world_size, key=key)
    tokens_per_step = cfg.batch_size * model_cfg.block_size * cfg.grad_accum * world.world_size
    peak = cfg.peak_flops or peak_flops_for(device, precision)
    runtime = {"device": device, "device_reason": choice.reason, "precision": precision,
               "precision_reason": why, "optimizer": opt_text, "world_size": world.world_size,
               "strategy": strategy, "peak_flops": peak, "params": sum(p.numel() for p in model.parameters())}
    run = _Run(cfg=cfg, model_cfg=model_cfg, world=world, device=device, model=model,
               step_model=model, optimizer=optimizer, scaler=scaler, loader=loader, precision=precision,
               run_config=resolved.run_record(runtime),
               tokenizer_file=Path(cfg.data) / "tokenizer.json",
               total_steps=_horizon(cfg, tokens_per_step), tokens_per_step=tokens_per_step,
               flops_per_token=train_flops_per_token(model_cfg.to_arch(), model_cfg.block_size), peak=peak,
               strategy=strategy, nonfinite=NonFiniteGuard(cfg.max_nonfinite), key=key)
    if resume is not None:
        _restore(run, resume, say)
    run.step_model = wrap_model(model, cfg.compile, world, strategy)
    if world.is_main:
        atomic_write_json(cfg.out / "config.json", run.run_config)
    return run, (run.step if resume is not None else None)


def _restore(run: _Run, ckpt: Path, say: Callable[[str], None]) -> None:
    """Continue exactly where checkpoint ``ckpt`` stopped."""
    if run.strategy == "fsdp":
        from hwlm.train.sharded import restore_sharded

        state, extra = restore_sharded(ckpt, run.model, run.optimizer)
    else:
        state, extra = ckpt_io.restore_training(ckpt, run.model, run.optimizer, run.device, run.key)
    if run.scaler is not None and "scaler" in extra:
        run.scaler.load_state_dict(extra["scaler"])
    run.loader.load_state_dict(state["loader"])
    run.step, run.tokens = int(state["step"]), int(state["tokens"])
    run.nonfinite.total = int(state.get("nonfinite_steps", 0))
    run.elapsed, run.train_seconds = float(state["elapsed"]), float(state["train_seconds"])
    run.last_ckpt = ckpt
    say(f"resumed from {ckpt} at step {run.step}")


def _save(run: _Run) -> None:
    """Checkpoint the current step: FSDP on every rank (DCP), otherwise rank 0 alone; all ranks agree."""
    from hwlm.model import Transformer

    state = {"tokens": run.tokens, "elapsed": run.elapsed, "train_seconds": run.train_seconds,
             "loader": run.loader.state_dict(), "precision": run.precision, "world_size": run.world.world_size,
             "nonfinite_steps": run.nonfinite.total}
    extra = {"scaler": run.scaler.state_dict()} if run.scaler is not None else {}
    if run.strategy == "fsdp":
        from hwlm.train.sharded import save_sharded

        run.last_ckpt = save_sharded(run.cfg.out, run.step, run.model, run.optimizer, state, run.run_config,
                                     run.tokenizer_file, run.cfg.keep_checkpoints, run.world,
                                     make_plain=lambda: Transformer(run.model_cfg), trainer_extra=extra)
        return
    err = None
    if run.world.is_main:
        try:
            ckpt_io.save_checkpoint(run.cfg.out, run.step, run.model, run.optimizer, state, run.run_config,
                                    run.tokenizer_file, run.cfg.keep_checkpoints, trainer_extra=extra,
                                    key=run.key if run.cfg.encrypt else None)
        except HwlmError as exc:
            err = exc
    agree(err, run.world, f"rank 0 could not write the checkpoint of step {run.step}; see its message")
    run.last_ckpt = Path(run.cfg.out) / "checkpoints" / ckpt_io._step_name(run.step)


def _val_loss(run: _Run) -> float:
    """Mean val loss over ``eval_batches`` global batches (``batch_size * world_size`` windows each),
    split round-robin over the ranks, so any number of processes evaluates the same windows."""
    from hwlm.data import eval_batches

    w = run.world
    batches = list(eval_batches(run.cfg.data, "val", run.cfg.batch_size, run.model_cfg.block_size,
                                max_batches=run.cfg.eval_batches * w.world_size, key=run.key))
    mine = batches[w.rank::w.world_size]
    # FSDP must run the wrapped module on every rank (it gathers shards); DDP needs no wrapper to evaluate.
    model = run.model if run.strategy == "ddp" else run.step_model
    nats, n = loss_sums(model, mine, run.device, run.precision)
    if run.strategy == "fsdp":
        # Every rank must make the same number of forward passes (each gathers the shards): pad and discard.
        pad = -(-len(batches) // w.world_size) - len(mine)
        loss_sums(model, batches[:1] * pad, run.device, run.precision)
    total = mean_across(nats, w) * w.world_size, mean_across(float(n), w) * w.world_size
    return total[0] / max(total[1], 1)


def _train_step(run: _Run, lr: float) -> tuple[torch.Tensor, bool]:
    """One optimizer step over grad_accum micro-batches; returns the mean loss (a device tensor) and
    whether it was finite on every rank (if not, nothing was updated)."""
    cfg, dev_type = run.cfg, run.device.split(":")[0]
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    poison = poisoned(run.step + 1, run.world.rank)
    loss_sum = torch.zeros((), device=run.device)
    for micro in range(cfg.grad_accum):
        x, y = run.loader.next_batch()  # (B, T) int64 on the CPU
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        with grad_sync(run.step_model, micro == cfg.grad_accum - 1):
            with autocast(dev_type, run.precision):
                _, loss = run.step_model(x, y, return_logits=False)  # fp32: output layer + loss fused in chunks
            if poison:
                loss = loss * float("nan")
            scaled = loss / cfg.grad_accum
            (run.scaler.scale(scaled) if run.scaler else scaled).backward()
        loss_sum += loss.detach()
    # Every rank must take the same branch, or the next collective would hang: agree on one flag.
    finite, run.stop_signal = agree_step(bool(torch.isfinite(loss_sum)), run.signals.signum, run.world)
    if not finite:
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler:
            run.scaler.update(run.scaler.get_scale() * 0.5)
        return loss_sum / cfg.grad_accum, False
    if cfg.grad_clip > 0:
        if run.scaler:
            run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum / cfg.grad_accum, True


def _progress_fraction(run: _Run) -> float:
    fracs = [run.step / run.total_steps] if run.total_steps else []
    if run.cfg.time_budget:
        fracs.append(run.elapsed / run.cfg.time_budget)
    return min(max(fracs, default=0.0), 1.0)


def _done(run: _Run, stop_at_step: int | None, elapsed: float) -> str | None:
    """'end' when the run is over, 'pause' at ``stop_at_step`` (checkpoint only, like a preemption), else None."""
    if run.total_steps is not None and run.step >= run.total_steps:
        return "end"
    if run.cfg.time_budget is not None and elapsed >= run.cfg.time_budget:
        return "end"
    return "pause" if stop_at_step is not None and run.step >= stop_at_step else None


def _eta(run: _Run, steps_per_s: float) -> float | None:
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


def _log_line(run: _Run, win: _Window, lr: float, bar: Progress) -> dict[str, Any]:
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


def _loop(run: _Run, logger: RunLogger, bar: Progress, stop_at_step: int | None,
          say: Callable[[str], None]) -> tuple[float | None, float | None]:
    """Step until done; returns the last logged train loss and the last val loss."""
    cfg = run.cfg
    win = _Window(loss=torch.zeros((), device=run.device))
    train_loss = val_loss = None
    finishing = _done(run, stop_at_step, run.elapsed)
    while not finishing:
        t0 = time.perf_counter()
        lr = lr_at(run.step, cfg, _progress_fraction(run), run.total_steps)
        loss, finite = _train_step(run, lr)
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
            val_loss = _val_loss(run)
            record = (record or {"step": run.step, "tokens": run.tokens}) | {"val_loss": val_loss}
        if record:
            logger.log(record)
        run.elapsed += time.perf_counter() - t0  # before saving, so a resumed time budget is right
        if (cfg.ckpt_interval and run.step % cfg.ckpt_interval == 0) or finishing:
            t_save = time.perf_counter()
            _save(run)
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
        run, resume_step = _setup(resolved, say, stack)
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
            val_loss = _val_loss(run)  # nothing left to train (resumed a finished run): still report val loss
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
