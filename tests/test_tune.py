"""``hwlm tune``: search-space and budget errors, unreachable storage, and a study that survives SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwlm.cli import main
from hwlm.errors import ConfigError
from hwlm.tune.config import load_space, parse_budget

optuna = pytest.importorskip("optuna")

SPACE = """
[tune]
task = "lm"
trials = 3
trial_budget = "2s"
eval_interval = 4

[space]
lr = {low = 1e-3, high = 1e-2, log = true}
n_embd = {choices = [16, 32]}

[train]
model = "debug"
batch_size = 4
warmup = 2
eval_batches = 2
log_interval = 2
ckpt_interval = 1000
precision = "fp32"
peak_flops = 1e9
"""


def _space(tmp_path: Path, text: str = SPACE) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def _one_line_error(capsys: pytest.CaptureFixture, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err and err[-1].startswith("hwlm: error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_budgets_parse() -> None:
    assert parse_budget("20s").amount == 20 and parse_budget("20s").kind == "seconds"
    assert parse_budget("2M tokens").amount == 2e6 and parse_budget("500J").kind == "joules"
    with pytest.raises(ConfigError, match="not understood"):
        parse_budget("20 parsecs")


@pytest.mark.parametrize("line, message", [
    ("width = {low = 1, high = 2}", "unknown search-space parameter 'width'"),
    ("lr = {}", "is empty"),
    ("n_layer = {choices = []}", "has no choices"),
    ("lr = {low = 0.1, high = 0.01}", "low <= high"),
    ("lr = {low = 0.0, high = 0.01, log = true}", "low must be above 0"),
])
def test_bad_search_space(line: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        load_space(_space(tmp_path, f"[space]\n{line}\n"))


def test_budget_too_small_for_one_step(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["tune", "--config", str(_space(tmp_path)), "--data", str(tiny_data), "--out", str(tmp_path / "t"),
               "--trial-budget", "10 tokens"])
    assert "below one optimizer step" in _one_line_error(capsys, rc)
    assert not (tmp_path / "t").exists()


def test_unreachable_storage(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["tune", "--config", str(_space(tmp_path)), "--data", str(tiny_data), "--out", str(tmp_path / "t"),
               "--storage", f"sqlite:///{tmp_path}/no/such/dir/study.db"])
    assert "cannot open the study storage" in _one_line_error(capsys, rc)


def _tune_cmd(space: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "hwlm", "tune", "--config", str(space), "--data", str(data), "--out", str(out),
            "--device", "cpu", "--heartbeat", "1", "--no-prune", "--price-on", "h100-sxm"]


def _trial_processes(out: Path) -> list[int]:
    """Pids whose command line runs a trial of this study (to check none outlives a killed tuner)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if str(out / "trials").encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _poll(cond, limit: float = 240.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.25)


@pytest.mark.slow
def test_killed_tune_resumes_and_retries_the_running_trial(tiny_data: Path, tmp_path: Path) -> None:
    space, out = _space(tmp_path), tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_tune_cmd(space, tiny_data, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    storage = f"sqlite:///{out / 'study.db'}"

    def states() -> dict[int, str]:
        if not (out / "study.db").is_file():
            return {}
        try:
            study = optuna.load_study(study_name="hwlm", storage=storage)
        except KeyError:
            return {}
        return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}

    # Kill the tuner while trial 1 trains, after trial 0 finished.
    # (The database is read only once trial 1 runs: opening it earlier would race the tuner creating its tables.)
    _poll(lambda: (out / "trials" / "0001" / "run" / "log.jsonl").is_file() or proc.poll() is not None)
    _poll(lambda: states().get(1) == "RUNNING" and states().get(0) == "COMPLETE" or proc.poll() is not None)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _poll(lambda: not _trial_processes(out), limit=30)  # the trial's process died with the tuner
    before = optuna.load_study(study_name="hwlm", storage=storage)
    finished = {t.number: t.value for t in before.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert 0 in finished and before.trials[1].state.name == "RUNNING"
    killed_params = before.trials[1].params

    done = subprocess.run(_tune_cmd(space, tiny_data, out), env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-2000:]
    after = optuna.load_study(study_name="hwlm", storage=storage)
    trials = after.get_trials()
    for number, value in finished.items():  # nothing finished was lost or rerun
        assert trials[number].state.name == "COMPLETE" and trials[number].value == value
    assert trials[1].state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].params == killed_params and retries[0].state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    for t in trials:
        if t.state.name == "COMPLETE":
            assert t.user_attrs["tokens_per_s"] > 0 and t.user_attrs["peak_memory_bytes"] > 0
            assert t.user_attrs["energy_j"] > 0 and "h100-sxm" in t.user_attrs["priced"]

    from hwlm.config import load_toml, resolve
    from hwlm.model.config import ModelConfig
    from hwlm.train.config import TrainConfig

    best = out / "best.toml"
    cfg = resolve(TrainConfig, file=best, section="train", overrides={"data": tiny_data})
    ModelConfig.from_name(cfg.model, **load_toml(best).get("model", {}), vocab_size=300)
    assert after.best_trial.params["n_embd"] == load_toml(best)["model"]["n_embd"]
    report = (out / "report.md").read_text()
    assert "retry of 1" in report and (out / "pareto.png").is_file()
