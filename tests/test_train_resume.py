"""Stop-and-resume is exact: N steps in one go == k steps, stop, resume to N (CPU, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hwlm.train import train
from hwlm.train.logs import read_log
from tiny import prepare_tiny, tiny_cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("resume"))


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_is_bit_identical(data: Path, tmp_path: Path, grad_accum: int) -> None:
    n, k = 10, 4
    kw = dict(max_steps=n, grad_accum=grad_accum, ckpt_interval=0, eval_interval=5, tensorboard=True)
    full = train(tiny_cfg(data, tmp_path / "full", **kw))
    paused = train(tiny_cfg(data, tmp_path / "split", **kw), stop_at_step=k)
    assert paused.steps == k and paused.last_checkpoint.name == "step-0000004"
    resumed = train(tiny_cfg(data, tmp_path / "split", resume="auto", **kw))
    assert resumed.steps == n and resumed.tokens == full.tokens

    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    log_a, log_b = read_log(tmp_path / "full"), read_log(tmp_path / "split")
    assert [r["step"] for r in log_b] == list(range(1, n + 1))        # no step twice, none missing
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]   # exactly equal floats
    assert [r.get("val_loss") for r in log_a] == [r.get("val_loss") for r in log_b]
    assert full.val_loss == resumed.val_loss


def test_resume_with_dropout_restores_rng(data: Path, tmp_path: Path) -> None:
    from hwlm.train.loop import build_model_config

    kw = dict(max_steps=6, ckpt_interval=0)
    cfg_full = tiny_cfg(data, tmp_path / "full", **kw)
    mcfg = build_model_config(cfg_full, {"dropout": 0.2})
    full = train(cfg_full, mcfg)
    train(tiny_cfg(data, tmp_path / "split", **kw), mcfg, stop_at_step=3)
    resumed = train(tiny_cfg(data, tmp_path / "split", resume="auto", **kw), mcfg)
    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_resume_from_explicit_checkpoint_path(data: Path, tmp_path: Path) -> None:
    first = train(tiny_cfg(data, tmp_path / "a", max_steps=6, ckpt_interval=3))
    ckpt3 = first.last_checkpoint.parent / "step-0000003"
    r = train(tiny_cfg(data, tmp_path / "b", max_steps=6, resume=str(ckpt3)))
    assert r.steps == 6
    a, b = _weights(first.last_checkpoint), _weights(r.last_checkpoint)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_resume_of_a_finished_run_trains_nothing(data: Path, tmp_path: Path) -> None:
    first = train(tiny_cfg(data, tmp_path / "run", max_steps=3))
    again = train(tiny_cfg(data, tmp_path / "run", max_steps=3, resume="auto"))
    assert again.steps == 3 and again.val_loss == pytest.approx(first.val_loss)
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2, 3]


def test_resume_auto_without_checkpoint_starts_fresh(data: Path, tmp_path: Path) -> None:
    r = train(tiny_cfg(data, tmp_path / "run", max_steps=2, resume="auto"))
    assert r.steps == 2


def test_crash_after_checkpoint_drops_logged_steps_it_redoes(data: Path, tmp_path: Path) -> None:
    """A run that logged steps 4-5 past its last checkpoint (3), then died: the resumed run redoes 4-5,
    and neither log.jsonl nor TensorBoard holds them twice."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    kw = dict(max_steps=8, ckpt_interval=3, eval_interval=0, tensorboard=True)
    full = train(tiny_cfg(data, tmp_path / "full", **kw))
    train(tiny_cfg(data, tmp_path / "split", **kw), stop_at_step=5)
    shutil.rmtree(tmp_path / "split" / "checkpoints" / "step-0000005")  # the crash lost it
    train(tiny_cfg(data, tmp_path / "split", resume="auto", **kw))
    log_a, log_b = read_log(tmp_path / "full"), read_log(tmp_path / "split")
    assert [r["step"] for r in log_b] == list(range(1, 9))
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    events = EventAccumulator(str(tmp_path / "split" / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(1, 9))
    a, b = _weights(full.last_checkpoint), _weights(tmp_path / "split" / "checkpoints" / "step-0000008")
    assert all(torch.equal(a[key], b[key]) for key in a)
