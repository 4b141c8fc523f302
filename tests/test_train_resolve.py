"""The run resolved once (hwlm.train.resolve): model sized to the data, a strict versioned file that
launched workers read, and the launch decision taken from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwlm.errors import ConfigError
from hwlm.model import ModelConfig
from hwlm.train.launch import plan_launch
from hwlm.train.resolve import ResolvedRun, resolve_run
from tiny import tiny_cfg


def test_resolve_sizes_the_model_to_the_data_once(tiny_data: Path, tmp_path: Path) -> None:
    run = resolve_run(tiny_cfg(tiny_data, tmp_path / "r"), {"n_layer": 1})
    vocab = json.loads((tiny_data / "manifest.json").read_text())["vocab_size"]
    assert run.model == ModelConfig.from_name("debug", n_layer=1, vocab_size=vocab)
    assert run.manifest["vocab_size"] == vocab
    with pytest.raises(ConfigError, match=r"model vocab_size 100 is smaller than the data's vocabulary"):
        resolve_run(tiny_cfg(tiny_data, tmp_path / "r"), {"vocab_size": 100})


def test_resolved_run_file_round_trips_and_is_strict(tiny_data: Path, tmp_path: Path) -> None:
    run = resolve_run(tiny_cfg(tiny_data, tmp_path / "r"), {"n_embd": 32})
    path = run.with_train(strategy="ddp").save(tmp_path / "r")
    assert path.parent == tmp_path / "r" and path.name.startswith(".resolved-run-")
    back = ResolvedRun.load(path)
    assert back == run.with_train(strategy="ddp") and back.train.strategy == "ddp"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "extra": 1}))
    with pytest.raises(ConfigError, match=r"unknown or missing keys \['extra'\]"):
        ResolvedRun.load(path)
    path.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(ConfigError, match="has version 99; this hwlm reads version 1"):
        ResolvedRun.load(path)
    data["train"]["lrr"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        ResolvedRun.load(path)


def test_launch_plan_comes_from_the_resolved_run(tiny_data: Path, tmp_path: Path) -> None:
    run = resolve_run(tiny_cfg(tiny_data, tmp_path / "r"))
    plan = plan_launch(run, "auto")
    assert (plan.nproc, plan.strategy) == (1, "single") and "CPU only" in plan.reason
    plan = plan_launch(run.with_train(strategy="fsdp"), 2)
    assert (plan.nproc, plan.strategy) == (2, "fsdp")
