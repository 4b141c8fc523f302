"""``hwlm quickstart`` end to end with a tiny override (the 2-minute default is checked by hand)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hwlm.cli import main
from hwlm.errors import ConfigError
from hwlm.quickstart import QuickstartConfig, quickstart, render_summary, unigram_entropy

TINY = dict(model="debug", vocab_size=300, max_steps=60, time_budget=None, lr=1e-2, warmup=5, batch_size=8,
            eval_interval=0, device="cpu", precision="fp32", max_new_tokens=8, progress=False)


def test_quickstart_summary_and_cache(tmp_path: Path) -> None:
    lines: list[str] = []
    r = quickstart(QuickstartConfig(out=tmp_path / "qs", **TINY), say=lines.append)
    assert [l for l in lines if l.startswith("[")][:6] == [
        "[1/6] hardware", f"[2/6] preparing the built-in corpus (Python's pydoc topics) in {tmp_path / 'qs' / 'data'}",
        "[3/6] measuring the fp32 matmul peak on cpu", "[4/6] training a debug model",
        "[5/6] evaluating on the whole val split", "[6/6] generating a sample"]
    assert r.steps == 60 and r.tokens == 60 * 8 * 32 and r.params > 0
    assert r.peak_flops and r.mfu and 0 < r.mfu < 1
    assert r.val_loss < r.unigram_entropy               # it learned more than token frequencies
    assert r.bits_per_byte > 0 and r.perplexity > 1
    assert r.sample.startswith("The for statement") and not r.data_cached
    assert r.unigram_entropy == pytest.approx(unigram_entropy(r.data_dir))
    table = render_summary(r)
    for label in ("hardware", "parameters", "tokens seen", "train time", "throughput", "MFU", "val loss",
                  "unigram entropy", "bits per byte", "predicted", str(r.run_dir)):
        assert label in table
    again = quickstart(QuickstartConfig(out=tmp_path / "qs", **{**TINY, "max_steps": 2}), say=lambda _: None)
    assert again.data_cached and again.steps == 2      # data reused, training fresh


def test_unigram_entropy_of_known_counts(tmp_path: Path) -> None:
    from hwlm.data import PrepareConfig, prepare
    for i in range(10):
        (tmp_path / f"t{i}.txt").write_text("aaab" * 25)
    # vocab 257 = 256 bytes + the end-of-text token: no merges, so every byte is one token and each
    # document is 75 'a', 25 'b', 1 end-of-text whichever documents land in the train split
    d = prepare(PrepareConfig(inputs=[str(tmp_path)], out=tmp_path / "d", vocab_size=257, val_fraction=0.3)).out
    p = [75 / 101, 25 / 101, 1 / 101]
    assert unigram_entropy(d) == pytest.approx(-sum(x * math.log(x) for x in p))


def test_quickstart_needs_an_end() -> None:
    with pytest.raises(ConfigError, match="needs time_budget or max_steps"):
        QuickstartConfig(time_budget=None, max_steps=None)


def test_quickstart_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["quickstart", "--out", str(tmp_path / "qs"), "--json", "--model", "debug", "--vocab-size", "300",
            "--max-steps", "3", "--time-budget", "none", "--device", "cpu", "--precision", "fp32",
            "--max-new-tokens", "4", "--no-progress"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("hardware", "params", "tokens", "train_seconds", "tokens_per_s", "mfu", "val_loss", "perplexity",
                "bits_per_byte", "unigram_entropy", "run_dir", "predicted"):
        assert key in out
    assert out["steps"] == 3


def test_quickstart_prints_the_planner_prediction(tmp_path: Path) -> None:
    r = quickstart(QuickstartConfig(out=tmp_path / "qs", **{**TINY, "max_steps": 4}), say=lambda _: None)
    p = r.predicted
    assert p is not None, r.notes
    assert p["seconds"] > 0 and p["memory_bytes"] > 0
    assert "priors for kind cpu" in p["efficiencies"]
    table = render_summary(r)
    assert "tokens/s measured" in table and "| predicted" in table and "vs prediction" in table
    assert "hwlm.plan with planner priors" in table
    # steps against steps (evaluation and checkpoint left out), training memory against the training state
    assert r.step_seconds <= r.train_seconds
    assert r.train_memory_bytes is not None and r.train_memory_bytes > 0  # training adds memory to the process
    assert set(p["memory_parts"]) == {"weights", "gradients", "optimizer", "activations"}
    m = p["memory_parts"]  # one process, one batch a step: the gradients and the activations are never both alive
    assert p["memory_bytes"] == pytest.approx(m["weights"] + m["optimizer"] + max(m["gradients"], m["activations"]))
    for label in ("train steps", "train memory", "measured (peak minus baseline before the model)",
                  "predicted per step:", "kernel overhead", "us per kernel", "activations' size"):
        assert label in table, label
    # One measured matmul peak for the MFU line and the prediction line (they were two measurements, 100 and
    # 166 GFLOP/s in one make demo): both name the same number.
    assert p["peak_flops"] == r.peak_flops
    assert f"of {r.peak_flops / 1e9:,.1f} GFLOP/s measured" in table
    assert f"measured fp32 matmul {r.peak_flops:.3g} FLOP/s" in table
