"""The optimize step: ``hwlm tune`` searches hyperparameters and structure with Optuna, hardware-aware.

Stage order: after ``plan`` (each trial is priced on other hardware by the planner) and ``bench``
(energy metering); trials are ``hwlm train`` runs of earlier stages, each in its own process.

    from hwlm.tune import TuneConfig, tune
    result = tune(TuneConfig(config="space.toml", data="runs/data", trials=12, trial_budget="20s"))
    result.best_recipe    # runs/tune/best.toml, ready for hwlm train --config

Modules: ``config`` (TuneConfig, the TOML search space, budgets), ``trial`` (one trial's process and
measurements), ``price`` (the planner's cost elsewhere), ``study`` (Optuna: storage, heartbeats,
retries, workers), ``results`` (best recipe, table, Pareto plot).
"""

from hwlm.tune.config import Budget, Param, Space, TuneConfig, load_space, parse_budget
from hwlm.tune.study import TuneResult, open_study, tune

__all__ = ["TuneConfig", "TuneResult", "tune", "open_study", "load_space", "parse_budget", "Space", "Param", "Budget"]
