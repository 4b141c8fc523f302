"""``TrainConfig``: every knob of a training run, torch-free so the CLI builds its parser fast.

The model's shape is *not* here: it is a :class:`hwlm.model.ModelConfig` built from the
``model`` preset name plus overrides (a ``[model]`` TOML section or ``--model-*`` flags).

    cfg = TrainConfig(data=Path("runs/data"), out=Path("runs/train"), max_steps=200)

A run stops at whichever of ``max_steps``, ``max_tokens`` and ``time_budget`` comes first;
the learning-rate schedule decays over that same horizon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hwlm.config import option
from hwlm.errors import ConfigError

__all__ = ["TrainConfig", "Precision", "Strategy", "Recompute"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Strategy = Literal["auto", "ddp", "fsdp"]
Recompute = Literal["none", "selective", "full"]


@dataclass
class TrainConfig:
    """Arguments of :func:`hwlm.train.train`; one docstring per field becomes ``--help``."""

    data: Path | None = option(None, "prepared data folder (from `hwlm prepare`) holding manifest.json")
    out: Path = option(Path("runs/train"), "run folder for config, logs, TensorBoard files and checkpoints")
    model: str = option("tiny", "model preset name (see hwlm.model); shape overrides via [model] or --model-*")
    batch_size: int = option(16, "sequences per micro-batch (per process)")
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step")
    max_steps: int | None = option(None, "stop after this many optimizer steps")
    max_tokens: int | None = option(None, "stop once this many training tokens were seen")
    time_budget: float | None = option(None, "stop after this many seconds of the training loop (evaluations "
                                        "and checkpoints count; set-up does not)")
    lr: float = option(6e-4, "peak learning rate, reached at the end of warm-up")
    min_lr: float = option(6e-5, "learning rate at the end of the cosine decay")
    warmup: int = option(100, "linear warm-up steps")
    weight_decay: float = option(0.1, "AdamW weight decay on Linear weights (not norms, biases or embeddings)")
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas as 'b1,b2'")
    grad_clip: float = option(1.0, "clip the gradient norm to this value; 0 turns clipping off")
    eval_interval: int = option(200, "evaluate on the val split every N steps (0: only at the end)")
    eval_batches: int = option(20, "val batches per evaluation")
    log_interval: int = option(10, "write a log.jsonl line every N steps")
    ckpt_interval: int = option(500, "write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = option(3, "how many of the newest checkpoints to keep (at least 2)")
    precision: Precision = option("auto", "auto: bf16 autocast on CUDA; on CPU bf16 only if measured faster")
    compile: bool = option(False, "compile the model with torch.compile")
    recompute: Recompute = option("none", "activation recompute in backward: none, selective (each block's attention "
                                          "sublayer) or full (whole blocks); less memory for more FLOPs")
    seed: int = option(1337, "seed for Python, NumPy, torch and the data loader")
    device: str = option("auto", "auto, cpu, cuda, cuda:N, mps or xla")
    resume: str = option("none", "none, auto (newest complete checkpoint in --out) or a checkpoint/run PATH")
    tensorboard: bool = option(True, "write TensorBoard event files to OUT/tb")
    progress: bool = option(True, "show a progress bar on stderr")
    peak_flops: float | None = option(None, "FLOP/s peak for MFU; unset: measure a quick matmul (unknown -> n/a)")
    strategy: Strategy = option("auto", "with several processes: ddp (a model copy per process), fsdp (sharded), "
                                        "or auto (ddp when the model fits one device)")
    max_nonfinite: int = option(5, "stop after this many optimizer steps in a row with a NaN/inf loss "
                                   "(each such step is skipped)")
    encrypt: bool = option(False, "write checkpoints encrypted (weights, optimizer, trainer state; AES-256-GCM) under "
                           "the key of --key-file or $HWLM_DATA_KEY")
    key_file: Path | None = option(None, "key file (mode 0600) for --encrypt and for reading encrypted data or "
                                   "checkpoints; unset: $HWLM_DATA_KEY. The path is recorded, never the key")

    def __post_init__(self) -> None:
        if self.data is not None:
            self.data = Path(self.data)
        if self.key_file is not None:
            self.key_file = Path(self.key_file)
        self.out = Path(self.out)
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        _check(self)

    @property
    def horizon_given(self) -> bool:
        return any(v is not None for v in (self.max_steps, self.max_tokens, self.time_budget))


def _positive(name: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    bad = value < 0 if allow_zero else value <= 0
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        need = "zero or more" if allow_zero else "more than zero"
        raise ConfigError(f"train config '{name}' is {value}; it must be {need}")


def _check(cfg: TrainConfig) -> None:
    for name in ("batch_size", "grad_accum", "max_steps", "max_tokens", "time_budget", "lr",
                 "log_interval", "eval_batches", "max_nonfinite"):
        _positive(name, getattr(cfg, name))
    for name in ("min_lr", "warmup", "weight_decay", "grad_clip", "eval_interval", "ckpt_interval"):
        _positive(name, getattr(cfg, name), allow_zero=True)
    if cfg.min_lr > cfg.lr:
        raise ConfigError(f"train config 'min_lr' ({cfg.min_lr}) is above 'lr' ({cfg.lr}); make it lr or less")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise ConfigError(f"train config 'betas' is {list(cfg.betas)}; give two numbers in [0, 1) like 0.9,0.95")
    if cfg.keep_checkpoints < 2:
        raise ConfigError(f"train config 'keep_checkpoints' is {cfg.keep_checkpoints}; keep at least 2 "
                          "so a crash while saving never leaves you without one")
    if not cfg.resume:
        raise ConfigError("train config 'resume' is empty; use none, auto or a checkpoint path")
    _positive("peak_flops", cfg.peak_flops)
