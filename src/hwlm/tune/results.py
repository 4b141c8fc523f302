"""What a study leaves behind: ``best.toml`` (a ready recipe), ``tune.json``, ``report.md`` and ``pareto.png``.

``best.toml`` is the best trial's ``[train]``/``[model]``/``[task]`` tables with its horizon left to
you (``hwlm train --config OUT/best.toml --data ... --time-budget 20``). ``report.md`` holds one
table row per trial (value, state, parameters, measured seconds, tokens/s, MFU, peak memory, energy
and the planner's predicted time and cost on each ``--price-on`` device) and the Pareto plot: the
validation metric against measured training seconds and energy, the trials on the front joined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hwlm.io import atomic_write_json, atomic_write_text
from hwlm.tune.config import TuneConfig
from hwlm.tune.trial import dump_toml, key_flags

__all__ = ["write_results", "trial_rows", "pareto_front"]


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One plain dict per trial, oldest first."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": dict(t.params),
                     "retry_of": t.system_attrs.get("failed_trial"), **{k: a.get(k) for k in (
                         "steps", "tokens", "seconds", "tokens_per_s", "mfu", "peak_memory_bytes", "energy_j",
                         "energy_method", "n_params", "error", "priced")}})
    return rows


def pareto_front(points: list[tuple[float, float]], minimize_value: bool) -> list[int]:
    """Indices of the points (cost, value) no other point beats on both cost and value."""
    better = (lambda a, b: a <= b) if minimize_value else (lambda a, b: a >= b)
    front = []
    for i, (c, v) in enumerate(points):
        dominated = any(c2 <= c and better(v2, v) and (c2, v2) != (c, v) for j, (c2, v2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def _table(rows: list[dict[str, Any]], cfg: TuneConfig) -> str:
    head = ["trial", "state", cfg.metric, "params", "s", "tok/s", "MFU", "peak MiB", "J (method)"]
    head += [f"{hw} s / $" for hw in cfg.price_on]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        priced = r.get("priced") or {}
        cells = [str(r["number"]) + (f" (retry of {r['retry_of']})" if r["retry_of"] is not None else ""), r["state"],
                 _fmt(r["value"]), ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items()),
                 _fmt(r["seconds"], ".1f"), _fmt(r["tokens_per_s"], ",.0f"),
                 "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                 _fmt(None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20, ".0f"),
                 "" if r["energy_j"] is None else f"{r['energy_j']:.0f} ({r['energy_method']})"]
        for hw in cfg.price_on:
            p = priced.get(hw, {})
            cells.append(p.get("note", "")[:40] if "note" in p else
                         f"{_fmt(p.get('time_s'), '.3g')} / {_fmt(p.get('cost_usd'), '.2g')}" if p else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], cfg: TuneConfig, path: Path) -> bool:
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None and r["seconds"]]
    if not done:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "seconds", "measured training seconds"), (axes[1], "energy_j", "energy (J)")):
        pts = [(r[key], r["value"]) for r in done if r.get(key) is not None]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", label="trials")
        front = sorted((pts[i] for i in pareto_front(pts, cfg.direction == "minimize")))
        ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:red", marker="o", label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel(cfg.metric)
        ax.legend()
    fig.suptitle(f"hwlm tune: {cfg.metric} ({cfg.direction}) against cost")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return True


def write_results(cfg: TuneConfig, study: Any) -> Any:
    """Write best.toml, tune.json, report.md and pareto.png into ``cfg.out``; return a TuneResult."""
    from hwlm.config import to_dict
    from hwlm.tune.study import TuneResult

    rows = trial_rows(study)
    best = None
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        pass
    recipe = None
    if best is not None:
        recipe = cfg.out / "best.toml"
        header = (f"# Best of {len(rows)} hwlm tune trials (trial {best.number}, {cfg.metric} {best.value:.4f}),\n"
                  f"# trained under a per-trial budget of {cfg.trial_budget}. Set a horizon when you use it:\n"
                  f"#   hwlm train --config {recipe} --data {cfg.data} --out runs/best --time-budget 60"
                  + "".join(f" {flag}" for flag in key_flags(cfg)))
        atomic_write_text(recipe, dump_toml(best.user_attrs["tables"], header))
    atomic_write_json(cfg.out / "tune.json", {"version": 1, "kind": "hwlm-tune", "config": to_dict(cfg),
                                              "best_trial": best.number if best else None,
                                              "best_value": best.value if best else None, "trials": rows})
    plotted = _plot(rows, cfg, cfg.out / "pareto.png")
    lines = [f"# hwlm tune: {cfg.study_name}", "",
             f"{len(rows)} trials in {cfg.storage_url}; {cfg.metric} ({cfg.direction}), budget {cfg.trial_budget} "
             "per trial.", ""]
    if best is not None:
        lines += [f"Best: trial {best.number}, {cfg.metric} {best.value:.4f}, parameters {best.params}; "
                  f"recipe `{recipe}`.", ""]
    lines += [_table(rows, cfg), ""] + (["![Pareto front](pareto.png)", ""] if plotted else [])
    atomic_write_text(cfg.out / "report.md", "\n".join(lines))
    return TuneResult(out=cfg.out, storage=cfg.storage_url, best_value=best.value if best else None,
                      best_params=dict(best.params) if best else {}, best_trial=best.number if best else None,
                      best_recipe=recipe, report=cfg.out / "report.md", trials=rows)
