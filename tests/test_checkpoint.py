"""Checkpoints: atomic under a full disk, pruned to K, verified by sha256, strict on load."""

from __future__ import annotations

import errno
import gc
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hwlm.errors import CheckpointError, ResourceError
from hwlm.train import checkpoint as ckpt_io
from hwlm.train import load_model, train
from tiny import prepare_tiny, tiny_cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_cfg(data, out, max_steps=6, ckpt_interval=2, keep_checkpoints=2))
    return out


def test_layout_and_pruning(run: Path) -> None:
    kept = ckpt_io.list_checkpoints(run)
    assert [p.name for p in kept] == ["step-0000004", "step-0000006"]   # keep_checkpoints=2
    files = sorted(p.name for p in kept[-1].iterdir())
    assert files == ["COMPLETE", "config.json", "model.safetensors", "optimizer.pt", "state.json",
                     "tokenizer.json", "trainer_state.pt"]
    done = json.loads((kept[-1] / "COMPLETE").read_text())
    assert done["step"] == 6 and set(done["files"]) == set(files) - {"COMPLETE"}
    state = json.loads((kept[-1] / "state.json").read_text())
    assert state["step"] == 6 and state["loader"]["step"] == 6 and state["tokens"] == 6 * 4 * 32


def test_disk_full_while_saving_keeps_the_previous_checkpoint(data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    train(tiny_cfg(data, out, max_steps=3, ckpt_interval=3))
    before = ckpt_io.list_checkpoints(out)

    def full_disk(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_io, "_save_torch", full_disk)
    with pytest.raises(ResourceError, match="disk full while writing .*step-0000006"):
        train(tiny_cfg(data, out, max_steps=6, ckpt_interval=3, resume="auto"))
    assert ckpt_io.list_checkpoints(out) == before
    ckpt_io.verify_checkpoint(before[-1])                        # still intact
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []                                        # the temp folder was removed


def test_corrupt_file_is_detected(run: Path, tmp_path: Path) -> None:
    import shutil
    ckpt = tmp_path / "step-0000006"
    shutil.copytree(ckpt_io.latest_checkpoint(run), ckpt)
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match="does not match its sha256 in COMPLETE"):
        load_model(ckpt)


def test_incomplete_checkpoint_is_ignored_and_refused(run: Path, tmp_path: Path) -> None:
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    broken = copy / "checkpoints" / "step-0000008"
    shutil.copytree(copy / "checkpoints" / "step-0000006", broken)
    (broken / "COMPLETE").unlink()
    assert ckpt_io.latest_checkpoint(copy).name == "step-0000006"
    with pytest.raises(CheckpointError, match="is incomplete"):
        ckpt_io.resolve_checkpoint(broken)


def test_run_without_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing")


def test_load_model_restores_the_weights(run: Path) -> None:
    from safetensors.torch import load_file
    loaded = load_model(run)
    assert loaded.step == 6 and not loaded.model.training and loaded.eot_id is not None
    saved = load_file(str(loaded.path / "model.safetensors"))
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert loaded.tokenizer.get_vocab_size() == 300


def test_rng_round_trip() -> None:
    state = ckpt_io.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt_io.restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_ctrl_c_inside_torch_save_stays_an_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Ctrl-C lands in the middle of a checkpoint's torch.save: its handler raises KeyboardInterrupt
    inside the file's write, which torch's C++ writer turns into a RuntimeError; the run must still end as an
    interrupt (exit 130, "hwlm: interrupted"), not a traceback."""

    class InterruptedFile:
        def __init__(self) -> None:
            self.calls, self.stop_at = 0, 3

        def write(self, data: bytes) -> int:
            self.calls += 1
            if self.calls == self.stop_at:
                raise KeyboardInterrupt  # what the signal handler does mid-write
            return len(data)

        def flush(self) -> None:
            pass

    with pytest.raises(KeyboardInterrupt):
        ckpt_io._torch_save({"w": torch.zeros(1024, 1024)}, InterruptedFile())
    # interrupted where torch's writer has not finished the archive: a signal's KeyboardInterrupt raised at
    # the first bytecode of its context manager's __exit__, before write_end_of_file. The unfinished writer's
    # destructor writes the archive's end; it must run before _torch_save returns, while the caller's file
    # is open: freed later, after `with open` closed it, that write raises inside C++ and the process aborts
    # (SIGABRT, "write to closed file": found by a CI run of test_second_ctrl_c_stops_at_once).
    def interrupted_exit(self: Any, *args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.serialization._open_zipfile_writer_buffer, "__exit__", interrupted_exit)
    f = InterruptedFile()
    f.stop_at = 0
    with pytest.raises(KeyboardInterrupt) as caught:
        ckpt_io._torch_save({"w": torch.zeros(1024, 1024)}, f)
    monkeypatch.undo()
    writes = f.calls
    del caught
    gc.collect()
    assert f.calls == writes
    with pytest.raises(RuntimeError):  # any other failure of the writer is left as it was
        ckpt_io._torch_save({"w": torch.zeros(4)}, tmp_path)  # a folder is no file
