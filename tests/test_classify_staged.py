"""Staged wide & deep (--wide-epochs: the bag alone, then the Transformer alone, the deep logits' weight chosen on
val), --keep-best (the best validation accuracy's weights at the end) and --wide-threads: they do what they say,
resume exactly, and refuse what does not apply with one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from classify_tiny import cls_cfg, prepare_cls
from hwlm.cli import main
from hwlm.errors import ConfigError
from hwlm.evaluate_classify import evaluate_classifier
from hwlm.train.classify import DEEP_WEIGHTS, train_classifier
from hwlm.train.task_config import TaskConfig

STAGED = dict(task="classify", classifier="wide-deep", embed=8, buckets=512, dropout=0.0, wide_lr=2e-2,
              wide_epochs=2.0)


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_cls(tmp_path_factory.mktemp("cls"))


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:07d}" / "model.safetensors")


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_staged_fits_the_bag_then_the_transformer_on_a_frozen_bag(cls_data: Path, tmp_path: Path) -> None:
    # 360 training texts / batch 32: 2 epochs are 23 bag steps, then 17 Transformer steps
    notes: list[str] = []
    cfg = cls_cfg(cls_data, tmp_path / "run", max_steps=40, eval_interval=10, ckpt_interval=23)
    r = train_classifier(cfg, TaskConfig(**STAGED, wide_threads=1), say=notes.append)
    assert r.steps == 40 and torch.get_num_threads() >= 1
    assert any("bag of words trained alone for 23 steps" in n for n in notes), notes
    a, b = _weights(tmp_path / "run", 23), _weights(tmp_path / "run", 40)
    for k in a:  # the bag is frozen after its epochs; the Transformer moved only after them
        if k.startswith("wide."):
            assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["deep.score.weight"], b["deep.score.weight"])
    init = cls_cfg(cls_data, tmp_path / "init", max_steps=1, lr=1e-12, min_lr=1e-12, warmup=0, eval_interval=0)
    train_classifier(init, TaskConfig(**STAGED), say=lambda m: None)
    # during the bag's steps the Transformer took no step (same seed: the same initial trunk)
    name = "deep.trunk.h.0.attn.c_attn.weight"
    assert torch.equal(a[name], _weights(tmp_path / "init", 1)[name])
    # the deep weight is one of the grid, chosen on val, and the saved model's logits are wide + w * deep
    w = float(b["deep_weight"])
    assert w in DEEP_WEIGHTS and _log(tmp_path / "run")[-1]["deep_weight"] == w
    from hwlm.train.classify_load import load_classifier

    loaded = load_classifier(tmp_path / "run")
    off = loaded.model.offset
    ids = torch.tensor([[5, 9, 11, 3, off + 7, off + 40]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        both = loaded.model(ids, mask)
        loaded.model.parts = "wide"
        wide = loaded.model(ids, mask)
        loaded.model.parts = "deep"
        deep = loaded.model(ids, mask)
    assert torch.allclose(both, wide + w * deep, atol=1e-5)
    ev = evaluate_classifier(tmp_path / "run", device="cpu", write=False)
    assert ev.report["accuracy"] >= 0.8, ev.report  # chance is 1/3


def test_staged_resume_is_bit_identical(cls_data: Path, tmp_path: Path) -> None:
    # (--keep-best keeps its best weights in memory: a resumed run compares only the evaluations after it)
    task = TaskConfig(**STAGED)
    cfg = cls_cfg(cls_data, tmp_path / "a", max_steps=34, eval_interval=0, ckpt_interval=0)
    train_classifier(cfg, task, say=lambda m: None)
    train_classifier(dataclasses.replace(cfg, out=tmp_path / "b"), task, say=lambda m: None, stop_at_step=28)
    train_classifier(dataclasses.replace(cfg, out=tmp_path / "b", resume="auto"), task, say=lambda m: None)
    a, b = _weights(tmp_path / "a", 34), _weights(tmp_path / "b", 34)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keep_best_ends_with_the_best_validation_weights(cls_data: Path, tmp_path: Path) -> None:
    # a learning rate that wrecks the LSTM late: the best evaluation is not the last
    notes: list[str] = []
    cfg = cls_cfg(cls_data, tmp_path / "run", max_steps=60, eval_interval=5, ckpt_interval=0, lr=5e-2, min_lr=5e-2,
                  warmup=0)
    r = train_classifier(cfg, TaskConfig(task="classify", classifier="lstm", embed=8, hidden=16, keep_best=True),
                         say=notes.append)
    vals = [x for x in _log(tmp_path / "run") if "val_accuracy" in x]
    best = max(vals[:-1], key=lambda x: (x["val_accuracy"], -x["val_loss"]))
    ev = evaluate_classifier(tmp_path / "run", split="val", device="cpu", write=False)
    assert ev.report["accuracy"] == pytest.approx(r.val_accuracy) == pytest.approx(max(
        best["val_accuracy"], vals[-1]["val_accuracy"]))
    if vals[-1].get("restored_step") is not None:
        assert vals[-1]["restored_step"] == best["step"] and any("--keep-best: restored" in n for n in notes)


def _one_line_error(capsys: pytest.CaptureFixture, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err and err[-1].startswith("hwlm: error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_staged_input(cls_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="wide_epochs"):
        TaskConfig(**{**STAGED, "wide_epochs": -1.0})
    with pytest.raises(ConfigError, match="wide_threads"):
        TaskConfig(**STAGED, wide_threads=-2)
    with pytest.raises(ConfigError, match="give --wide-epochs E too"):
        TaskConfig(**{**STAGED, "wide_epochs": 0.0}, wide_threads=1)
    base = ["train", "--task", "classify", "--data", str(cls_data), "--out", str(tmp_path / "x"), "--max-steps", "1",
            "--device", "cpu", "--no-progress"]
    msg = _one_line_error(capsys, main([*base, "--classifier", "bow", "--wide-epochs", "2"]))
    assert "--wide-epochs trains the bag of words of --classifier wide-deep first, not bow" in msg
    msg = _one_line_error(capsys, main([*base, "--classifier", "wide-deep", "--model", "debug", "--wide-epochs",
                                        "nan"]))
    assert "wide_epochs" in msg
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_the_planner_refuses_a_staged_recipe_and_prices_keep_best(cls_data: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from importlib.resources import files

    lstm = files("hwlm") / "recipes" / "lstm-sentences.toml"
    text = lstm.read_text(encoding="utf-8")
    (tmp_path / "best.toml").write_text(text.replace('classifier = "lstm"', 'classifier = "lstm"\nkeep_best = true'))
    (tmp_path / "staged.toml").write_text(text.replace('classifier = "lstm"', 'classifier = "wide-deep"\n'
                                                                               'wide_epochs = 5.0'))
    plan = ["plan", "train", "--hardware", "h100-sxm", "--data", str(cls_data), "--config"]
    assert main([*plan, str(tmp_path / "best.toml")]) == 0  # the same steps: priced as the plain recipe
    capsys.readouterr()
    msg = _one_line_error(capsys, main([*plan, str(tmp_path / "staged.toml")]))
    assert "trains no LSTM, MLP or bag-of-words classifier" in msg
