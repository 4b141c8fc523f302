"""The training loop: a tiny run's outputs, logs, gradient accumulation and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hwlm.errors import CheckpointError, ConfigError, DataError, ResourceError
from hwlm.formulas import param_count
from hwlm.model import ModelConfig
from hwlm.train import train
from hwlm.train.logs import read_log
from hwlm.train.loop import build_model_config
from tiny import prepare_tiny, tiny_cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("train"))


def test_tiny_run_writes_the_run_folder(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = train(tiny_cfg(data, out, tensorboard=True, log_interval=2))
    assert (r.steps, r.tokens) == (6, 6 * 4 * 32)
    assert r.val_loss is not None and r.train_loss is not None and r.tokens_per_s > 0
    assert r.mfu is not None and r.mfu > 0            # peak_flops given: MFU is known
    log = read_log(out)
    assert [x["step"] for x in log] == [2, 3, 4, 6]   # log steps, plus step 3's evaluation
    assert set(log[0]) == {"step", "tokens", "loss", "lr", "tokens_per_s", "mfu"}
    assert "val_loss" in log[1] and "val_loss" in log[-1]
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_layer"] == 2 and config["train"]["max_steps"] == 6
    assert config["runtime"]["precision"] == "fp32"
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert r.last_checkpoint == out / "checkpoints" / "step-0000006"


def test_loss_goes_down(data: Path, tmp_path: Path) -> None:
    r = train(tiny_cfg(data, tmp_path / "run", max_steps=40, eval_interval=0, ckpt_interval=0, lr=1e-2, warmup=5))
    log = read_log(tmp_path / "run")
    assert log[-1]["loss"] < log[0]["loss"] - 1.0
    assert r.val_loss < log[0]["loss"]


def test_grad_accum_counts_tokens(data: Path, tmp_path: Path) -> None:
    r = train(tiny_cfg(data, tmp_path / "run", grad_accum=2, max_steps=2, batch_size=2))
    assert r.tokens == 2 * 2 * 2 * 32


def test_max_tokens_ends_the_run(data: Path, tmp_path: Path) -> None:
    r = train(tiny_cfg(data, tmp_path / "run", max_steps=None, max_tokens=3 * 4 * 32 - 5))
    assert r.steps == 3


def test_model_overrides_shape_the_model(data: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(data, tmp_path / "run", max_steps=1)
    mcfg = build_model_config(cfg, {"n_layer": 1, "n_embd": 8})
    assert (mcfg.n_layer, mcfg.n_embd, mcfg.vocab_size) == (1, 8, 300)
    r = train(cfg, mcfg)
    assert r.params == param_count(mcfg.to_arch()).total
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["n_embd"] == 8


def test_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist|no manifest|manifest"):
        train(tiny_cfg(tmp_path / "nowhere", tmp_path / "run"))


def test_no_data_given(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no data folder given: pass --data DIR"):
        train(tiny_cfg(None, tmp_path / "run"))


def test_empty_val_split(data: Path, tmp_path: Path) -> None:
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["splits"]["val"].update(tokens=0, bytes=0, documents=0, shards=[])
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="the val split of .* is empty"):
        train(tiny_cfg(broken, tmp_path / "run"))


def test_no_end_given(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the run has no end"):
        train(tiny_cfg(data, tmp_path / "run", max_steps=None))


def test_unknown_preset_lists_known(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model preset 'huge'.*known presets"):
        train(tiny_cfg(data, tmp_path / "run", model="huge"))


def test_fresh_run_refuses_to_mix_with_old_checkpoints(data: Path, tmp_path: Path) -> None:
    train(tiny_cfg(data, tmp_path / "run", max_steps=3))
    with pytest.raises(ConfigError, match="already holds checkpoints .*--resume auto"):
        train(tiny_cfg(data, tmp_path / "run", max_steps=3))


def test_resume_from_other_model_shape(data: Path, tmp_path: Path) -> None:
    train(tiny_cfg(data, tmp_path / "run", max_steps=3))
    cfg = tiny_cfg(data, tmp_path / "run", max_steps=6, resume="auto")
    with pytest.raises(CheckpointError, match=r"another model config .*n_embd=16 vs 32"):
        train(cfg, build_model_config(cfg, {"n_embd": 32}))


def test_unwritable_out_folder(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ResourceError, match="cannot write"):
        train(tiny_cfg(data, blocker / "run"))


def test_time_budget_ends_the_run(data: Path, tmp_path: Path) -> None:
    r = train(tiny_cfg(data, tmp_path / "run", max_steps=None, time_budget=1e-6))
    assert r.steps == 1 and r.val_loss is not None and r.last_checkpoint is not None


def test_auto_precision_on_cpu_is_measured_and_leaves_rng_alone() -> None:
    import torch

    from hwlm.model import Transformer
    from hwlm.train.runtime import choose_precision

    model = Transformer(ModelConfig.from_name("debug"))
    state = torch.get_rng_state()
    choice = choose_precision("auto", "cpu", model, 2, 16)
    assert torch.equal(torch.get_rng_state(), state)
    assert choice.name in ("fp32", "bf16")
    assert "ms in fp32" in choice.reason and "ms with bf16 autocast" in choice.reason
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16", "cpu", model, 2, 16)
