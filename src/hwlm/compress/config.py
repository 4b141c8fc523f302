"""``CompressConfig``: what ``hwlm compress`` does to a run (torch-free, so the CLI builds its parser fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hwlm.config import option
from hwlm.errors import ConfigError
from hwlm.formulas import PRECISIONS

__all__ = ["CompressConfig", "METHODS", "METHOD_PRECISIONS", "PATTERNS", "INT4_GROUPS"]

METHODS = ("int8", "int4", "prune", "distill")
# The precisions each method can write; the first is what ``auto`` falls back to without a measurement.
METHOD_PRECISIONS = {"int8": ("w8a8", "w8a16"), "int4": ("w4a16",), "prune": ("fp32",), "distill": ("fp32",)}
# A method may be named by its precision: ``--method w8a16`` is ``--method int8 --precision w8a16``.
_ALIASES = {"w8a8": "int8", "w8a16": "int8", "w4a16": "int4"}
PATTERNS = ("unstructured", "2:4")
INT4_GROUPS = (32, 64, 128, 256)
MAX_FINETUNE_FRACTION = 0.1  # the budget: a masked fine-tune of at most 10% of the original steps


@dataclass
class CompressConfig:
    """Which run to compress, how, and where the new run folder goes."""

    run: Path | None = option(None, "run (or checkpoint) folder to compress")
    out: Path | None = option(None, "new run folder to write (must not exist yet)")
    method: str = option("int8", "int8 (w8a8 / w8a16), int4 (w4a16), prune or distill")
    precision: str = option("auto", "int8: w8a8, w8a16 or auto (measured here, the choice is recorded)")
    group_size: int = option(128, "int4: weights per scale/zero group (32, 64, 128 or 256; must divide the width)")
    quantize_head: bool = option(True, "also quantize the output layer (the largest matrix of a small model)")
    sparsity: float = option(0.5, "prune: fraction of each block weight set to zero, in (0, 1)")
    pattern: str = option("unstructured", "prune: unstructured (magnitude, --sparsity) or 2:4 (2 of every 4)")
    finetune_fraction: float = option(0.1, "prune: masked fine-tune steps as a fraction of the run's steps "
                                           "(at most 0.1; 0: none)")
    model: str = option("debug", "distill: the student's model preset")
    steps: int | None = option(None, "distill: training steps of the student (default: the teacher's steps)")
    alpha: float = option(0.5, "distill: weight of the KL term; (1 - alpha) weighs the LM loss")
    temperature: float = option(1.0, "distill: softmax temperature of the KL term")
    lr: float | None = option(None, "prune fine-tune / distill learning rate (default: the run's min_lr / lr)")
    batch_size: int | None = option(None, "fine-tune / distill batch size (default: the run's)")
    data: Path | None = option(None, "prepared data folder (default: the one the run trained on)")
    eval_batches: int = option(8, "validation batches for perplexity and KL in the table")
    table: bool = option(True, "measure the trade-off table (quality, size, memory, speed, energy)")
    batches: list[int] = option(factory=lambda: [1, 8, 32], help="decode batch sizes timed in the table")
    decode_steps: int = option(16, "decode steps timed per batch size in the table")
    device: str = option("cpu", "cpu, cuda, cuda:N or auto")
    seed: int = option(0, "seed for fine-tuning, distillation and measurement prompts")
    key_file: Path | None = option(None, "key file (mode 0600) of an encrypted run or data folder (unset: "
                                         "$HWLM_DATA_KEY); an encrypted run gives an encrypted output under its key")

    def __post_init__(self) -> None:
        self.run = Path(self.run) if self.run is not None else None
        self.out = Path(self.out) if self.out is not None else None
        self.data = Path(self.data) if self.data is not None else None
        self.key_file = Path(self.key_file) if self.key_file is not None else None
        if self.method in _ALIASES:
            if self.precision not in ("auto", self.method):
                raise ConfigError(f"--method {self.method} and --precision {self.precision} disagree: give one")
            self.method, self.precision = _ALIASES[self.method], self.method
        if self.method not in METHODS:
            raise ConfigError(f"unknown compression method {self.method!r}; choose one of "
                              f"{', '.join(METHODS + tuple(_ALIASES))}")
        allowed = METHOD_PRECISIONS[self.method]
        if self.precision != "auto" and self.precision not in allowed:
            known = "" if self.precision in PRECISIONS else f" (precisions: {', '.join(PRECISIONS)}, auto)"
            raise ConfigError(f"method {self.method} writes {' or '.join(allowed)}, not {self.precision!r}{known}")
        if self.group_size not in INT4_GROUPS:
            raise ConfigError(f"int4 group size {self.group_size} is not supported; choose one of "
                              f"{', '.join(map(str, INT4_GROUPS))}")
        if not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.pattern not in PATTERNS:
            raise ConfigError(f"unknown sparsity pattern {self.pattern!r}; choose one of {', '.join(PATTERNS)}")
        if not 0.0 <= self.finetune_fraction <= MAX_FINETUNE_FRACTION:
            raise ConfigError(f"finetune_fraction must be in [0, {MAX_FINETUNE_FRACTION}], got "
                              f"{self.finetune_fraction}")
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise ConfigError(f"distill alpha must be in [0, 1] and temperature > 0, got {self.alpha} and "
                              f"{self.temperature}")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive (or unset), got {value}")
        if self.eval_batches <= 0 or self.decode_steps <= 0 or not self.batches or min(self.batches) <= 0:
            raise ConfigError("eval_batches, decode_steps and every table batch size must be positive")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
