"""One trial of ``hwlm tune``: a recipe, a ``hwlm train`` process under a budget, and what it measured.

Each trial is its own process (``python -m hwlm train --config trials/N/recipe.toml ...``) so that its
peak memory (the child's ``ru_maxrss`` from ``wait4``) and CPU time are its own, a pruned trial is
stopped by killing it, and a trial can never leave state behind in the tuner. The child dies with the
tuner (``PR_SET_PDEATHSIG``), so a killed ``hwlm tune`` leaves no orphan training behind.

While it runs, the trial's ``log.jsonl`` is read for validation records; each is reported to Optuna
(``trial.report``) and, when the pruner says so, the process is killed and the trial is pruned.

Energy: a measured counter (RAPL on the CPU, NVML on a GPU) when the machine has one, else the trial's
own CPU seconds x :data:`hwlm.bench.energy.DEFAULT_CPU_WATTS_PER_CORE` (labelled ``estimate-cpu-seconds``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hwlm.errors import ConfigError, HwlmError
from hwlm.tune.config import TASK_DROPOUT_KINDS, Budget, TuneConfig

__all__ = ["TrialOutcome", "trial_tables", "run_trial", "dump_toml", "budget_flags", "key_flags"]

POLL_S = 0.25


@dataclass
class TrialOutcome:
    """What one finished (or pruned) trial measured."""

    value: float | None
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    mfu: float | None
    peak_memory_bytes: int
    energy_j: float | None
    energy_method: str
    params: int
    pruned: bool = False
    error: str | None = None
    intermediate: list[tuple[int, float]] = field(default_factory=list)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        raise ConfigError("a recipe value is None; TOML has no null: leave the key out")
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def dump_toml(tables: dict[str, dict[str, Any]], header: str = "") -> str:
    """Flat tables of scalars and lists as TOML text (what hwlm's recipes hold)."""
    out = [header.rstrip() + "\n"] if header else []
    for name, table in tables.items():
        if not table:
            continue
        out.append(f"\n[{name}]\n" if out else f"[{name}]\n")
        out += [f"{k} = {_toml_value(v)}\n" for k, v in table.items() if v is not None]
    return "".join(out)


def trial_tables(space_fixed: dict[str, dict[str, Any]], values: dict[str, Any], sections: dict[str, str],
                 cfg: TuneConfig, seed: int) -> dict[str, dict[str, Any]]:
    """The recipe tables of one trial: fixed tables, then the drawn values, then the tuner's settings."""
    tables = {s: dict(space_fixed.get(s, {})) for s in ("train", "model", "task")}
    for name, value in values.items():
        tables[sections[name]][name] = value
    if cfg.task == "classify":
        tables["task"]["task"] = "classify"
        kind = tables["task"].get("classifier", "transformer")
        if kind in TASK_DROPOUT_KINDS and "dropout" in tables["model"]:
            tables["task"]["dropout"] = tables["model"].pop("dropout")  # those classifiers own their dropout
    train = tables["train"]
    if "lr" in train and "min_lr" not in train:
        # The schedule's floor follows a searched peak (lr / 10, Chinchilla's and nanoGPT's ratio): the default
        # floor would sit above a small drawn lr, which TrainConfig refuses.
        train["min_lr"] = train["lr"] / 10
    train.update(seed=seed, eval_interval=cfg.eval_interval)
    for key in ("max_steps", "max_tokens", "time_budget"):
        tables["train"].pop(key, None)  # the trial budget is the only horizon
    return tables


def budget_flags(budget: Budget, cfg: TuneConfig) -> list[str]:
    """Train flags that enforce the budget. A joule budget becomes seconds at the device's nominal power
    (``--power-w``, else the energy meter's figure); the energy each trial used is measured and recorded."""
    if budget.kind == "seconds":
        return ["--time-budget", repr(budget.amount)]
    if budget.kind == "tokens":
        return ["--max-tokens", str(int(budget.amount))]
    watts = cfg.power_w or _nominal_watts(cfg.device)
    return ["--time-budget", repr(budget.amount / watts)]


def key_flags(cfg: TuneConfig) -> list[str]:
    """Train flags for an encrypted ``--data`` folder: ``--encrypt`` (a trial's weights are as secret as its
    data) and ``--key-file`` when one is given (else the trial reads $HWLM_DATA_KEY, inherited); none for a
    plain folder. The tuner has already checked the key (``hwlm.tune.study``); only its path is passed on."""
    manifest = json.loads((Path(cfg.data) / "manifest.json").read_text(encoding="utf-8"))
    if not manifest.get("encryption"):
        return []
    return ["--encrypt", *(["--key-file", str(cfg.key_file)] if cfg.key_file is not None else [])]


def _nominal_watts(device: str) -> float:
    """The energy meter's nominal power of this device (what a joule budget is converted with)."""
    from hwlm.bench.energy import DEFAULT_CPU_WATTS_PER_CORE, _physical_cores

    if device.startswith("cuda"):
        try:
            from hwlm.bench.energy import NvmlEnergy

            limit = NvmlEnergy(int(device.split(":")[1]) if ":" in device else 0).power_limit_w()
            if limit:
                return float(limit)
        except HwlmError:
            pass
    return DEFAULT_CPU_WATTS_PER_CORE * max(1, _physical_cores())


def _new_records(path: Path, seen: int) -> tuple[list[dict[str, Any]], int]:
    if not path.is_file():
        return [], seen
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    complete = lines if path.read_text(encoding="utf-8", errors="replace").endswith("\n") else lines[:-1]
    out = []
    for line in complete[seen:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out, len(complete)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the tuner dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def run_trial(tables: dict[str, dict[str, Any]], trial_dir: Path, cfg: TuneConfig, budget: Budget, threads: int,
              report: Callable[[int, float], bool]) -> TrialOutcome:
    """Train one trial in a child process; ``report(step, value)`` returns True to prune it."""
    from hwlm.bench.energy import DEFAULT_CPU_WATTS_PER_CORE, EnergyMeter
    from hwlm.io import atomic_write_text

    trial_dir.mkdir(parents=True, exist_ok=True)
    recipe = trial_dir / "recipe.toml"
    atomic_write_text(recipe, dump_toml(tables))
    run_dir = trial_dir / "run"
    flags = budget_flags(budget, cfg)
    cmd = [sys.executable, "-m", "hwlm", "train", "--config", str(recipe), "--data", str(cfg.data), "--out",
           str(run_dir), "--resume", "auto", "--device", cfg.device, "--no-progress", "--no-tensorboard", "--json",
           *flags, *key_flags(cfg)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    meter = EnergyMeter(cfg.device if cfg.device != "auto" else "cpu")
    meter.start()
    t0 = time.perf_counter()
    with open(trial_dir / "stdout.json", "wb") as out, open(trial_dir / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, preexec_fn=_die_with_parent)
        seen, intermediate, pruned, rusage, status = 0, [], False, None, None
        while status is None:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, rusage = st, ru
            records, seen = _new_records(run_dir / "log.jsonl", seen)
            for r in records:
                if r.get(cfg.metric) is not None and not pruned:
                    intermediate.append((int(r["step"]), float(r[cfg.metric])))
                    if report(int(r["step"]), float(r[cfg.metric])):
                        pruned = True
                        proc.kill()
            if status is None:
                time.sleep(POLL_S)
        proc.returncode = os.waitstatus_to_exitcode(status)
    energy = meter.stop()
    seconds = time.perf_counter() - t0
    cpu_s = rusage.ru_utime + rusage.ru_stime
    joules, method = (energy.joules, energy.method) if energy.method.startswith("measured") else (
        DEFAULT_CPU_WATTS_PER_CORE * cpu_s, "estimate-cpu-seconds")
    peak = int(rusage.ru_maxrss) * 1024  # Linux: KiB
    if pruned:
        return TrialOutcome(value=intermediate[-1][1], steps=intermediate[-1][0], tokens=0, seconds=seconds,
                            tokens_per_s=0.0, mfu=None, peak_memory_bytes=peak, energy_j=joules, energy_method=method,
                            params=0, pruned=True, intermediate=intermediate)
    if proc.returncode != 0:
        lines = (trial_dir / "stderr.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        msg = next((ln for ln in reversed(lines) if ln.startswith("hwlm: error:")), lines[-1] if lines else "")
        return TrialOutcome(value=None, steps=0, tokens=0, seconds=seconds, tokens_per_s=0.0, mfu=None,
                            peak_memory_bytes=peak, energy_j=joules, energy_method=method, params=0,
                            error=msg.removeprefix("hwlm: error: ") or f"exit status {proc.returncode}",
                            intermediate=intermediate)
    res = json.loads((trial_dir / "stdout.json").read_text(encoding="utf-8"))
    value = res.get("val_loss") if cfg.task == "lm" else res.get("val_macro_f1")
    return TrialOutcome(value=value, steps=res["steps"], tokens=res["tokens"], seconds=res["seconds"],
                        tokens_per_s=res["tokens_per_s"], mfu=res.get("mfu"), peak_memory_bytes=peak,
                        energy_j=joules, energy_method=method, params=res["params"], intermediate=intermediate)
