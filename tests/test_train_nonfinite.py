"""Numerical faults: a NaN/inf loss skips the update and is counted; max_nonfinite in a row stop the run
with one line, leaving the last good checkpoint. NaN comes from the test hook HWLM_TEST_NAN_STEPS."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hwlm.errors import ConfigError
from hwlm.train import checkpoint as ckpt_io
from hwlm.train import train
from hwlm.train.logs import read_log
from tiny import prepare_tiny, tiny_cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("nan"))


def test_nonfinite_steps_are_skipped_and_counted(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWLM_TEST_NAN_STEPS", "3,4")
    out = tmp_path / "run"
    r = train(tiny_cfg(data, out, max_steps=6, ckpt_interval=2, keep_checkpoints=3, eval_interval=0))
    assert r.steps == 6 and r.nonfinite_steps == 2 and r.train_loss is not None
    log = read_log(out)
    assert [x["loss"] is None for x in log] == [False, False, True, True, False, False]
    assert [x.get("nonfinite_steps") for x in log] == [None, None, 1, 2, 2, 2]
    # Steps 3 and 4 were skipped: the weights at step 4 are those of step 2, exactly.
    a = load_file(str(out / "checkpoints" / "step-0000002" / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / "step-0000004" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt2 = torch.load(out / "checkpoints" / "step-0000002" / "optimizer.pt", weights_only=True)
    opt4 = torch.load(out / "checkpoints" / "step-0000004" / "optimizer.pt", weights_only=True)
    assert all(torch.equal(opt2["state"][i]["exp_avg"], opt4["state"][i]["exp_avg"]) for i in opt2["state"])


def test_too_many_in_a_row_stop_with_one_line(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWLM_TEST_NAN_STEPS", "3,4,5")
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as exc:
        train(tiny_cfg(data, out, max_steps=8, ckpt_interval=2, max_nonfinite=3))
    assert str(exc.value) == ("training loss was NaN/inf for 3 steps in a row (steps 3-5); lower --lr, use "
                              "--precision fp32 or check the data; last good checkpoint: step-0000004")
    assert [p.name for p in ckpt_io.list_checkpoints(out)] == ["step-0000002", "step-0000004"]
    ckpt_io.verify_checkpoint(out / "checkpoints" / "step-0000004")


def test_max_nonfinite_must_be_positive(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'max_nonfinite' is 0; it must be more than zero"):
        tiny_cfg(data, tmp_path, max_nonfinite=0)
