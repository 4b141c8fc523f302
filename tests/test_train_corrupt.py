"""``--resume auto`` past a corrupt newest checkpoint: a missing file or a sha256 mismatch moves that
checkpoint aside (renamed, never deleted) with a warning and the run continues from the one before;
errors that would hit every checkpoint alike stop with one line and move nothing."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from hwlm.errors import CheckpointError
from hwlm.model import ModelConfig
from hwlm.train import checkpoint as ckpt_io
from hwlm.train import train
from tiny import tiny_cfg


def _copy(tiny_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    assert [p.name for p in ckpt_io.list_checkpoints(out)] == ["step-0000003", "step-0000006"]
    return out


def _names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def _flip_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_corrupt_newest_is_moved_aside_and_the_one_before_resumes(damage: str, tiny_run: Path, tiny_data: Path,
                                                                  tmp_path: Path) -> None:
    out = _copy(tiny_run, tmp_path)
    newest = out / "checkpoints" / "step-0000006"
    if damage == "flip":
        _flip_byte(newest / "model.safetensors")
    else:
        (newest / "optimizer.pt").unlink()
    damaged = sorted(p.name for p in newest.iterdir())
    notes: list[str] = []
    result = train(tiny_cfg(tiny_data, out, max_steps=8, resume="auto"), say=notes.append)
    assert result.steps == 8
    warnings = [n for n in notes if n.startswith("warning:")]
    assert len(warnings) == 1 and "step-0000006" in warnings[0] and "moved it aside to corrupt-step-0000006-" \
        in warnings[0]
    assert any(n.startswith(f"resumed from {out / 'checkpoints' / 'step-0000003'} at step 3") for n in notes)
    aside = [p for p in (out / "checkpoints").iterdir() if p.name.startswith("corrupt-step-0000006-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == damaged  # kept whole
    assert [p.name for p in ckpt_io.list_checkpoints(out)][-1] == "step-0000008"


def test_another_models_config_stops_and_moves_nothing(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = _copy(tiny_run, tmp_path)
    before = _names(out)
    other = ModelConfig.from_name("debug", n_layer=1, vocab_size=300)
    with pytest.raises(CheckpointError, match=r"step-0000006 is from another model config .*n_layer=2 vs 1"):
        train(tiny_cfg(tiny_data, out, max_steps=8, resume="auto"), other)
    assert _names(out) == before


def test_unreadable_checkpoint_stops_and_moves_nothing(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = _copy(tiny_run, tmp_path)
    before = _names(out)

    def denied(path, *a, **k):  # what a file without read permission gives (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(ckpt_io, "sha256_file", denied)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint file .*step-0000006.*Permission denied"):
        train(tiny_cfg(tiny_data, out, max_steps=8, resume="auto"))
    assert _names(out) == before


def test_every_checkpoint_corrupt_stops_after_moving_them_aside(tiny_run: Path, tiny_data: Path,
                                                                tmp_path: Path) -> None:
    out = _copy(tiny_run, tmp_path)
    for ckpt in ckpt_io.list_checkpoints(out):
        _flip_byte(ckpt / "state.json")
    with pytest.raises(CheckpointError, match="every checkpoint in .* was corrupt"):
        train(tiny_cfg(tiny_data, out, max_steps=8, resume="auto"), say=lambda _m: None)
    names = _names(out)
    assert len(names) == 2 and all(n.startswith("corrupt-step-") for n in names)
