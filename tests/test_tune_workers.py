"""``hwlm tune``: parallel workers finish the study with complete records; a poor trial is pruned on its curve.

Budgets are in tokens, not seconds, so what a trial does does not depend on the machine's load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwlm.cli import main

optuna = pytest.importorskip("optuna")

# The debug preset (block 32) at batch 4 is 128 tokens a step: 3,072 tokens are 24 steps, evaluated at 8, 16, 24.
SPACE = """
[tune]
task = "lm"
trials = {trials}
trial_budget = "3072 tokens"
eval_interval = 8

[space]
{space}

[train]
model = "debug"
batch_size = 4
warmup = 2
eval_batches = 2
log_interval = 4
ckpt_interval = 1000
precision = "fp32"
peak_flops = 1e9
"""
RECORD = ("tables", "steps", "tokens", "seconds", "tokens_per_s", "mfu", "peak_memory_bytes", "energy_j",
          "energy_method", "n_params", "priced")


def _space(tmp_path: Path, trials: int, space: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(SPACE.format(trials=trials, space=space))
    return path


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="hwlm", storage=f"sqlite:///{out / 'study.db'}")


def _tune(space: Path, data: Path, out: Path, *flags: str) -> int:
    return main(["tune", "--config", str(space), "--data", str(data), "--out", str(out), "--device", "cpu",
                 "--price-on", "h100-sxm", *flags])


def _val_losses(trial_dir: Path) -> dict[int, float]:
    log = [json.loads(line) for line in (trial_dir / "run" / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in log if r.get("val_loss") is not None}


@pytest.mark.slow
def test_two_workers_finish_every_trial_with_complete_records(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    space = _space(tmp_path, 4, 'lr = {low = 1e-3, high = 1e-2, log = true}\nn_embd = {choices = [16, 32]}')
    assert _tune(space, tiny_data, out, "--workers", "2", "--no-prune") == 0
    trials = _study(out).get_trials()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    # Both workers stop once 4 trials finished; the one still busy then finishes its own (so 4 or 5).
    assert 4 <= len(done) <= 5 and len(done) == len(trials), [t.state.name for t in trials]
    assert len({t.number for t in done}) == len(done)  # no trial claimed twice
    for t in done:
        assert all(t.user_attrs.get(k) is not None for k in RECORD), (t.number, t.user_attrs)
        assert t.user_attrs["tokens"] >= 3072 and t.user_attrs["steps"] == 24
        assert "h100-sxm" in t.user_attrs["priced"] and t.user_attrs["tables"]["train"]["seed"] == t.number
        trial_dir = out / "trials" / f"{t.number:04d}"
        losses = _val_losses(trial_dir)
        assert sorted(losses) == [8, 16, 24] and t.value == pytest.approx(losses[24])
        assert t.intermediate_values == pytest.approx(losses)
    assert (out / "best.toml").is_file() and (out / "report.md").is_file()


@pytest.mark.slow
def test_a_poor_trial_is_pruned_with_its_intermediate_values(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    space = _space(tmp_path, 3, "lr = {low = 1e-7, high = 1e-2, log = true}")
    # Fix the draws: two trials that learn, then one whose learning rate barely moves the weights.
    out.mkdir()
    study = optuna.create_study(study_name="hwlm", storage=f"sqlite:///{out / 'study.db'}", direction="minimize")
    for lr in (5e-3, 5e-3, 1e-7):
        study.enqueue_trial({"lr": lr})
    assert _tune(space, tiny_data, out) == 0
    trials = _study(out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = trials[2]
    assert pruned.params["lr"] == 1e-7
    assert pruned.user_attrs["tables"]["train"]["min_lr"] == pytest.approx(1e-8)  # the floor follows a drawn lr
    logged = _val_losses(out / "trials" / "0002")
    # What the pruner read is the run's own validation curve, up to the step it was stopped at.
    assert pruned.intermediate_values and set(pruned.intermediate_values) <= set(logged)
    assert all(pruned.intermediate_values[s] == pytest.approx(logged[s]) for s in pruned.intermediate_values)
    step = max(pruned.intermediate_values)
    median = sorted(t.intermediate_values[step] for t in trials[:2])
    assert pruned.intermediate_values[step] > sum(median) / 2  # worse than the completed trials' median there
    assert pruned.user_attrs["steps"] == step and "report.md" in {p.name for p in out.iterdir()}
