"""Hugging Face export of last-token classifiers: GPT2/LlamaForSequenceClassification logits within 1e-4."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classify_tiny import cls_cfg, prepare_cls
from hwlm.cli import main
from hwlm.train.classify import collate, encode_texts, train_classifier
from hwlm.train.task_config import TaskConfig

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_cls(tmp_path_factory.mktemp("clsx"), n=150)


@pytest.mark.parametrize("model, arch", [("debug", "GPT2ForSequenceClassification"),
                                         ("llama-debug", "LlamaForSequenceClassification")])
def test_logits_match_transformers(model: str, arch: str, cls_data: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    from hwlm.train.classify_load import load_classifier

    cfg = cls_cfg(cls_data, tmp_path / "run", max_steps=8, model=model)
    train_classifier(cfg, TaskConfig(task="classify"), say=lambda m: None)
    assert main(["export", "--run", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert arch in capsys.readouterr().out
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == arch
    assert hf.config.id2label == {0: "mid", 1: "neg", 2: "pos"} and hf.config.label2id["pos"] == 2
    loaded = load_classifier(tmp_path / "run")
    assert hf.config.pad_token_id == loaded.spec["pad_id"]
    texts = ["a good film", "the plot of the scene was very awful and sad in the end", "okay"]
    x, mask = collate(encode_texts(loaded.tokenizer, texts, 32), loaded.spec["pad_id"], False)  # right-padded
    with torch.no_grad():
        ours = loaded.model(x, mask)
        theirs = hf(input_ids=x, attention_mask=mask.long()).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.pad_token_id == loaded.spec["pad_id"]


@pytest.mark.parametrize("task", [TaskConfig(task="classify", pooling="mean"),
                                  TaskConfig(task="classify", classifier="lstm")])
def test_other_heads_refuse(task: TaskConfig, cls_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train_classifier(cls_cfg(cls_data, tmp_path / "run", max_steps=2), task, say=lambda m: None)
    rc = main(["export", "--run", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and ("last-token" in err[0] or "pool the last" in err[0]), err
    assert not (tmp_path / "hf").exists()
