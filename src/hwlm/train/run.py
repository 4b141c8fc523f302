"""Building a training run: the :class:`Run` the loop steps, made once by :func:`setup_run`.

Setting up, in order: the device and process group, the run folder's lock, the sharing strategy
(single, DDP or FSDP), the data key (``--key-file``), the checkpoint to resume (rank 0 chooses, every
rank takes it), the model and its precision, the optimizer, the data loader and the planner's FLOPs per
token; a resumed run then gets back its weights, optimizer, loader position and counters. The loop
itself is :mod:`hwlm.train.loop`; one step, evaluation and saving are :mod:`hwlm.train.step`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hwlm.config import to_dict
from hwlm.device import select_device
from hwlm.errors import ConfigError, HwlmError
from hwlm.formulas import train_flops_per_token
from hwlm.io import atomic_write_json, folder_lock
from hwlm.model import ModelConfig
from hwlm.train import checkpoint as ckpt_io
from hwlm.train.config import TrainConfig
from hwlm.train.faults import NonFiniteGuard
from hwlm.train.launch import choose_strategy, training_bytes
from hwlm.train.logs import info
from hwlm.train.optim import build_optimizer
from hwlm.train.parallel import World, agree, broadcast_object, init_distributed, shard_model, wrap_model
from hwlm.train.resolve import ResolvedRun
from hwlm.train.runtime import choose_precision, keep_freed_memory, seed_everything
from hwlm.train.signals import StopSignals

__all__ = ["Run", "setup_run", "peak_flops_for"]


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
class Run:
    """Everything the loop body needs, built once by :func:`setup_run`."""

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


def setup_run(resolved: ResolvedRun, say: Callable[[str], None],
           stack: contextlib.ExitStack) -> tuple[Run, int | None]:
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
    run = Run(cfg=cfg, model_cfg=model_cfg, world=world, device=device, model=model,
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


def _restore(run: Run, ckpt: Path, say: Callable[[str], None]) -> None:
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
