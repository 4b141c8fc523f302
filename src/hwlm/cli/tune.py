"""``hwlm tune``: search hyperparameters and structure with Optuna (a thin layer over :func:`hwlm.tune.tune`).

    hwlm tune --config space.toml --data runs/data --out runs/tune --trials 12 --trial-budget 20s
    hwlm tune --config space.toml --data runs/data --workers 2                 # two trial processes
    hwlm tune --config space.toml --data runs/data --storage postgresql://host/db   # many machines
    # killed? run the same command again: finished trials stay, the running one is retried
"""

from __future__ import annotations

import argparse
import json

from hwlm.config import add_arguments, overrides_from_args, resolve
from hwlm.tune.config import TuneConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune", help="search hyperparameters and model structure (Optuna TPE, pruning, SQLite)",
        description="Run trials of `hwlm train` under a per-trial budget, drawn by Optuna's TPE sampler from the "
                    "[space] of --config, pruning poor ones on their validation metric. Writes OUT/best.toml, "
                    "OUT/report.md (table, Pareto plot), OUT/tune.json; the study lives in --storage.")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_arguments(p, TuneConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hwlm.tune import tune

    overrides = overrides_from_args(args, TuneConfig)
    cfg = resolve(TuneConfig, file=overrides.get("config"), overrides=overrides, section="tune")
    from hwlm.crypt import warn_unused_key

    warn_unused_key(cfg.key_file, [cfg.data])  # trials write encrypted checkpoints only from encrypted data
    r = tune(cfg)
    if args.json:
        print(json.dumps({"out": str(r.out), "storage": r.storage, "best_value": r.best_value,
                          "best_params": r.best_params, "best_trial": r.best_trial,
                          "best_recipe": str(r.best_recipe) if r.best_recipe else None, "report": str(r.report),
                          "trials": len(r.trials)}, indent=2))
        return 0
    states = {}
    for t in r.trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    print(f"study {r.storage}: {len(r.trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))})")
    if r.best_trial is not None:
        print(f"  best: trial {r.best_trial}, {cfg.metric} {r.best_value:.4f}, {r.best_params}")
        print(f"  recipe {r.best_recipe}; report {r.report}")
    return 0
