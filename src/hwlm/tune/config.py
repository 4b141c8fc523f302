"""``TuneConfig`` and the search space: what ``hwlm tune`` searches, under which budget, stored where.

Torch-free (the CLI builds its parser from it). A space file is TOML:

    [tune]                    # TuneConfig fields (CLI flags override them)
    task = "lm"               # lm: minimize val loss; classify: maximize val macro-F1
    trials = 12
    trial_budget = "20s"      # or "2M tokens" / "2e6tokens", or "500J"

    [space]                   # one table per searched parameter
    lr = {low = 1e-4, high = 3e-3, log = true}
    warmup = {low = 0, high = 100, step = 10}        # integers when low, high and step are
    n_layer = {choices = [2, 4]}
    n_embd = {choices = [64, 128]}

    [train]                   # fixed TrainConfig fields of every trial
    model = "tiny"
    [model]                   # fixed ModelConfig fields
    [task]                    # fixed TaskConfig fields (classify)

A searched name belongs to the train, model or task config (one of :data:`TUNABLE`); unknown and
empty parameters are ConfigErrors that name them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from hwlm.config import load_toml, option
from hwlm.crypt import KEY_FILE_HELP
from hwlm.errors import ConfigError

__all__ = ["TuneConfig", "Param", "Space", "load_space", "parse_budget", "Budget", "TUNABLE"]

# Which config each tunable name belongs to (structure and optimization knobs of a run).
TUNABLE = {
    "train": ("lr", "min_lr", "warmup", "weight_decay", "batch_size", "grad_clip", "grad_accum"),
    "model": ("n_layer", "n_head", "n_kv_head", "n_embd", "d_ff", "dropout", "block_size", "tie_embeddings"),
    "task": ("lora_rank", "lora_alpha", "embed", "hidden", "layers", "ngrams", "max_len", "classifier", "pooling"),
}
# "dropout" of a classifier without a Transformer trunk lives in the task config.
TASK_DROPOUT_KINDS = ("lstm", "bow", "mlp")


@dataclass
class TuneConfig:
    """Arguments of :func:`hwlm.tune.tune`."""

    config: Path | None = option(None, "search-space TOML ([tune], [space], and fixed [train]/[model]/[task])")
    data: Path | None = option(None, "prepared data folder every trial trains on")
    key_file: Path | None = option(None, f"{KEY_FILE_HELP}; an encrypted --data folder's trials get only its path, "
                                         "read it themselves and write encrypted checkpoints under it")
    out: Path = option(Path("runs/tune"), "study folder: study.db, trials/, best.toml, report")
    task: Literal["lm", "classify"] = option("lm", "lm: minimize validation loss; classify: maximize val macro-F1")
    trials: int = option(12, "finished (complete or pruned) trials to reach in the study (with --workers N, up to "
                                 "N-1 more: workers busy when the count is reached finish their trial)")
    trial_budget: str = option("20s", "per-trial budget: seconds ('20s'), tokens ('2M tokens') or joules ('500J')")
    workers: int = option(1, "trials run in parallel processes on this machine")
    storage: str | None = option(None, "Optuna storage URL (default sqlite:///OUT/study.db); a shared database "
                                       "(postgresql://...) lets several machines work on one study")
    study_name: str = option("hwlm", "study name inside the storage")
    seed: int = option(0, "seed of the TPE sampler (trials get seeds seed+number)")
    prune: bool = option(True, "stop trials whose intermediate validation metric is below the median")
    eval_interval: int = option(25, "steps between a trial's validation evaluations (what pruning reads)")
    price_on: list[str] = option(factory=lambda: ["h100-sxm", "tpu-v5e"],
                                 help="catalog hardware the planner prices each trial's configuration on")
    device: str = option("auto", "device of the trials: auto, cpu, cuda, cuda:N")
    power_w: float | None = option(None, "watts used to turn a joule budget into seconds (default: the energy "
                                         "meter's nominal power of this device)")
    heartbeat: int = option(2, "seconds between a running trial's heartbeats; a trial silent for 2x this "
                               "(a killed worker) is marked failed and retried")

    def __post_init__(self) -> None:
        if self.config is not None:
            self.config = Path(self.config)
        if self.data is not None:
            self.data = Path(self.data)
        if self.key_file is not None:
            self.key_file = Path(self.key_file)
        self.out = Path(self.out)
        self.price_on = [str(p) for p in self.price_on]
        for name in ("trials", "workers", "eval_interval", "heartbeat"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tune config '{name}' is {getattr(self, name)}; it must be at least 1")
        parse_budget(self.trial_budget)

    @property
    def direction(self) -> str:
        return "minimize" if self.task == "lm" else "maximize"

    @property
    def metric(self) -> str:
        return "val_loss" if self.task == "lm" else "val_macro_f1"

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"


@dataclass(frozen=True)
class Budget:
    """A per-trial budget: ``kind`` seconds | tokens | joules, and its amount."""

    kind: str
    amount: float


_BUDGET = re.compile(r"^\s*([0-9.eE+_]+)\s*([kKmMgG]?)\s*(s|sec|seconds|tokens?|tok|j|joules?)\s*$", re.IGNORECASE)


def parse_budget(text: str) -> Budget:
    """``'20s'`` -> seconds 20; ``'2M tokens'`` -> tokens 2e6; ``'500J'`` -> joules 500.

    >>> parse_budget("2M tokens")
    Budget(kind='tokens', amount=2000000.0)
    """
    m = _BUDGET.match(str(text))
    if not m:
        raise ConfigError(f"trial budget {text!r} is not understood; give seconds ('20s'), tokens ('2M tokens') "
                          "or joules ('500J')")
    try:
        amount = float(m.group(1).replace("_", "")) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    except ValueError:
        raise ConfigError(f"trial budget {text!r} has no valid number") from None
    unit = m.group(3).lower()
    kind = "seconds" if unit.startswith("s") else "tokens" if unit.startswith("tok") else "joules"
    if not (amount > 0 and math.isfinite(amount)):
        raise ConfigError(f"trial budget {text!r} must be more than zero")
    return Budget(kind, amount)


@dataclass(frozen=True)
class Param:
    """One searched parameter: a float/int range (optionally log or stepped) or a list of choices."""

    name: str
    section: str            # train | model | task
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def is_int(self) -> bool:
        vals = [self.low, self.high] + ([self.step] if self.step is not None else [])
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool) for v in vals)

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna ``trial`` draws for this parameter."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass
class Space:
    """The parameters searched and the fixed tables every trial starts from."""

    params: list[Param]
    fixed: dict[str, dict[str, Any]]   # {"train": {...}, "model": {...}, "task": {...}}
    tune: dict[str, Any]               # the file's [tune] table


def _section_of(name: str) -> str:
    for section, names in TUNABLE.items():
        if name in names:
            return section
    known = ", ".join(n for names in TUNABLE.values() for n in names)
    raise ConfigError(f"unknown search-space parameter {name!r}; tunable: {known}")


def _param(name: str, spec: Any, where: str) -> Param:
    section = _section_of(name)
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"search-space parameter {name!r} in {where} is empty; give {{low, high}} or {{choices}}")
    unknown = set(spec) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise ConfigError(f"search-space parameter {name!r} has unknown key(s) {', '.join(sorted(unknown))}; "
                          "use low, high, log, step or choices")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"search-space parameter {name!r} has no choices; list at least one value")
        return Param(name, section, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"search-space parameter {name!r} needs both low and high (or choices)")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
        raise ConfigError(f"search-space parameter {name!r} has low {low!r} and high {high!r}; give numbers "
                          "with low <= high")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"search-space parameter {name!r} is log-scaled, so low must be above 0 (got {low})")
    return Param(name, section, low=low, high=high, log=log, step=spec.get("step"))


def load_space(path: str | Path) -> Space:
    """Read and check a search-space file (see the module docstring)."""
    raw = load_toml(path)
    unknown = set(raw) - {"tune", "space", "train", "model", "task"}
    if unknown:
        raise ConfigError(f"{path} has unknown table(s) {', '.join(sorted(unknown))}; "
                          "use [tune], [space], [train], [model], [task]")
    space = raw.get("space", {})
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path} has no [space] table, or it is empty: name at least one parameter to search")
    tune_table = raw.get("tune", {})
    known = {f.name for f in fields(TuneConfig)} - {"config"}
    bad = set(tune_table) - known
    if bad:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(bad))} in [tune] of {path}; valid: {', '.join(sorted(known))}")
    params = [_param(name, spec, str(path)) for name, spec in space.items()]
    return Space(params=params, fixed={s: dict(raw.get(s, {})) for s in ("train", "model", "task")}, tune=tune_table)
