"""``tune(cfg) -> TuneResult``: an Optuna study of hwlm runs, persistent, parallel and hardware-aware.

The study is data in a database (Optuna's RDB storage): SQLite in the study folder by default, or any
``--storage`` URL that several machines share (Optuna's own distributed mode: every ``hwlm tune``
pointed at it draws trials from the one TPE sampler's history). Trials send heartbeats; a trial whose
worker was killed stops beating, is marked failed once ``2 x heartbeat`` seconds have passed, and is
retried with the same parameters (``RetryFailedTrialCallback``). So a killed ``hwlm tune`` resumes
with its finished trials kept and its running trial run again.

    objective(trial):   values <- TPE draws from the [space]       (LoRA rank, lr, width, depth, ...)
                        a `hwlm train` child under the trial budget (seconds / tokens / joules)
                        each validation record -> trial.report; the median pruner may stop it
                        measured tokens/s, MFU, peak memory, energy; the planner's price elsewhere
                        -> val loss (lm, minimized) or val macro-F1 (classify, maximized)

``workers`` runs that many trial loops in processes on this machine, with the cores split between them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwlm.config import to_dict
from hwlm.errors import ConfigError, DataError, HwlmError
from hwlm.tune.config import Space, TuneConfig, load_space, parse_budget
from hwlm.tune.trial import budget_flags, run_trial, trial_tables

__all__ = ["TuneResult", "tune", "open_study"]

MAX_FAILURES_IN_A_ROW = 3


@dataclass
class TuneResult:
    """The study's outcome: the best trial, and where the recipe and report were written."""

    out: Path
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_recipe: Path | None
    report: Path
    trials: list[dict[str, Any]]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("hwlm tune needs Optuna: pip install 'hwlm[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and their retry callback are marked experimental; they are what resuming relies on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_study(cfg: TuneConfig, worker: int = 0) -> Any:
    """Create or load the study in ``cfg.storage_url``; an unreachable storage is a one-line ConfigError.
    Worker ``w`` seeds its sampler with ``seed + w``, so parallel workers do not draw the same startup trials."""
    optuna = _optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = cfg.storage_url
    if cfg.storage is None:
        cfg.out.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # two processes creating one database's tables at once: the loser retries
        try:
            return _create(cfg, optuna, RDBStorage, RetryHeartbeatStaleTrialCallback, worker)
        except ConfigError:
            if attempt == 2:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _create(cfg: TuneConfig, optuna: Any, RDBStorage: Any, Retry: Any, worker: int) -> Any:
    url = cfg.storage_url
    try:
        storage = RDBStorage(url, heartbeat_interval=cfg.heartbeat, grace_period=2 * cfg.heartbeat,
                             heartbeat_stale_trial_callback=Retry(max_retry=2),
                             engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=cfg.eval_interval)
                  if cfg.prune else optuna.pruners.NopPruner())
        study = optuna.create_study(storage=storage, study_name=cfg.study_name, direction=cfg.direction,
                                    sampler=optuna.samplers.TPESampler(seed=cfg.seed + worker, n_startup_trials=4),
                                    pruner=pruner, load_if_exists=True)
    except HwlmError:
        raise
    except Exception as exc:  # SQLAlchemy / driver errors: unreachable host, missing driver, bad path
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"cannot open the study storage {url}: {first}; check the URL, the database driver "
                          "and that the server is reachable") from None
    if study.direction.name.lower() != cfg.direction:
        raise ConfigError(f"study {cfg.study_name!r} in {url} {study.direction.name.lower()}s; this --task "
                          f"{cfg.task} would {cfg.direction}: use another --study-name")
    return study


def _retry_stale(study: Any, cfg: TuneConfig) -> None:
    """Fail (and so retry) trials left RUNNING by a killed worker, waiting out the grace period once."""
    optuna = _optuna()
    from optuna.storages import fail_stale_trials

    running = optuna.trial.TrialState.RUNNING
    deadline = time.monotonic() + 2 * cfg.heartbeat + 1
    before = [t.number for t in study.get_trials(deepcopy=False, states=(running,))]
    while before and time.monotonic() < deadline:
        fail_stale_trials(study)
        before = [t.number for t in study.get_trials(deepcopy=False, states=(running,))]
        if before:
            time.sleep(0.5)  # a live worker elsewhere keeps beating: its trials stay RUNNING, rightly


def _data_facts(cfg: TuneConfig) -> dict[str, Any]:
    import json

    if cfg.data is None:
        raise ConfigError("no data folder given: pass --data DIR (made by `hwlm prepare`)")
    path = Path(cfg.data) / "manifest.json"
    if not path.is_file():
        raise DataError(f"no manifest.json in {cfg.data}: run `hwlm prepare` first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    kind = "classify" if manifest.get("task") == "classify" else "lm"
    if kind != cfg.task:
        raise ConfigError(f"{cfg.data} is prepared for task {kind}; run hwlm tune with --task {kind}")
    return manifest


def _check_key(cfg: TuneConfig, manifest: dict[str, Any]) -> None:
    """An encrypted --data folder's key (--key-file, else $HWLM_DATA_KEY), checked once against the manifest's
    key id: a missing or wrong key is one line before any trial starts, not a study of failed trials."""
    from hwlm.crypt import key_for, optional_key

    key_for(f"data folder {cfg.data}", manifest.get("encryption"), optional_key(cfg.key_file))


def _check_budget(cfg: TuneConfig, space: Space) -> None:
    """A budget that cannot pay for one optimizer step of the cheapest trial is an error up front."""
    from hwlm.model.config import ModelConfig

    budget = parse_budget(cfg.trial_budget)
    if budget.kind == "tokens" and cfg.task == "lm":
        def smallest(name: str, default: Any) -> int:
            p = next((p for p in space.params if p.name == name), None)
            if p is not None:
                return int(min(p.choices) if p.choices is not None else p.low)
            return int(space.fixed["train" if name in ("batch_size", "grad_accum") else "model"].get(name, default))

        preset = ModelConfig.from_name(space.fixed["train"].get("model", "tiny"), vocab_size=512)
        per_step = smallest("batch_size", 16) * smallest("grad_accum", 1) * smallest("block_size", preset.block_size)
        if budget.amount < per_step:
            raise ConfigError(f"trial budget {cfg.trial_budget!r} is below one optimizer step ({per_step:,} tokens "
                              "for the smallest batch x block in the space): raise the budget")
    seconds = budget.amount if budget.kind == "seconds" else (
        float(budget_flags(budget, cfg)[1]) if budget.kind == "joules" else None)
    if seconds is not None and seconds < 1.0:
        raise ConfigError(f"trial budget {cfg.trial_budget!r} is {seconds:.2f} s of training, too little for "
                          "set-up, one step and an evaluation: give at least 1 s")


def _objective(cfg: TuneConfig, space: Space, vocab: int, threads: int) -> Any:
    optuna = _optuna()
    from hwlm.tune.price import price_trial

    budget = parse_budget(cfg.trial_budget)
    sections = {p.name: p.section for p in space.params}

    def objective(trial: Any) -> float:
        values = {p.name: p.suggest(trial) for p in space.params}
        tables = trial_tables(space.fixed, values, sections, cfg, seed=cfg.seed + trial.number)
        trial.set_user_attr("tables", tables)

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            return cfg.prune and trial.should_prune()

        o = run_trial(tables, cfg.out / "trials" / f"{trial.number:04d}", cfg, budget, threads, report)
        for key in ("steps", "tokens", "seconds", "tokens_per_s", "mfu", "peak_memory_bytes", "energy_j",
                    "energy_method", "error"):
            trial.set_user_attr(key, getattr(o, key))
        trial.set_user_attr("n_params", o.params)
        if o.tokens:
            trial.set_user_attr("priced", price_trial(tables, o.tokens, cfg.price_on, vocab))
        if o.pruned:
            raise optuna.TrialPruned(f"pruned at step {o.steps}")
        if o.error or o.value is None:
            raise _TrialFailed(o.error or "the run reported no validation metric")
        return o.value

    return objective


class _TrialFailed(Exception):
    """A trial's run failed (its one-line error is in the trial's user attributes)."""


def _work(cfg: TuneConfig, threads: int, worker: int = 0) -> None:
    """One worker's loop: draw and run trials until the study holds ``cfg.trials`` finished ones."""
    optuna = _optuna()
    from optuna.study import MaxTrialsCallback

    space = load_space(cfg.config)
    study = open_study(cfg, worker)
    vocab = int(_data_facts(cfg).get("vocab_size") or 0)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    objective = _objective(cfg, space, vocab, threads)
    failures = 0
    while len(study.get_trials(deepcopy=False, states=done)) < cfg.trials:
        n_before = len(study.get_trials(deepcopy=False, states=done))
        study.optimize(objective, n_trials=1, catch=(_TrialFailed,),
                       callbacks=[MaxTrialsCallback(cfg.trials, states=done)])
        if len(study.get_trials(deepcopy=False, states=done)) > n_before:
            failures = 0
            continue
        failures += 1
        if failures >= MAX_FAILURES_IN_A_ROW:
            last = study.get_trials(deepcopy=False)[-1]
            raise ConfigError(f"{failures} trials in a row failed; the last said: {last.user_attrs.get('error')} "
                              f"(see {cfg.out / 'trials' / f'{last.number:04d}' / 'stderr.txt'})")


def _spawn_worker(cfg_dict: dict[str, Any], threads: int, worker: int) -> None:
    from hwlm.config import from_dict

    _work(from_dict(TuneConfig, cfg_dict), threads, worker)


def tune(cfg: TuneConfig) -> TuneResult:
    """Run (or resume) the study described by ``cfg`` until it holds ``cfg.trials`` finished trials."""
    from hwlm.tune.results import write_results

    if cfg.config is None:
        raise ConfigError("hwlm tune needs a search space: pass --config SPACE.toml")
    space = load_space(cfg.config)
    _check_key(cfg, _data_facts(cfg))
    _check_budget(cfg, space)
    study = open_study(cfg)
    _retry_stale(study, cfg)
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    procs = []
    if cfg.workers > 1:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_spawn_worker, args=(to_dict(cfg), threads, w)) for w in range(1, cfg.workers)]
        for p in procs:
            p.start()
    try:
        _work(cfg, threads)
    finally:
        for p in procs:
            p.join()
    return write_results(cfg, open_study(cfg))
