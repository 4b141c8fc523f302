"""Wide & deep classifier: its logits are its parts' sum, it learns, warm starts from an LM and a bag-of-words
run, resumes exactly, and refuses what does not apply with one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from classify_tiny import cls_cfg, prepare_cls, rows, write_jsonl
from hwlm.cli import main
from hwlm.errors import ConfigError
from hwlm.evaluate_classify import evaluate_classifier
from hwlm.train.classify import train_classifier
from hwlm.train.task_config import TaskConfig

WD = dict(task="classify", classifier="wide-deep", embed=8, buckets=512, dropout=0.0)


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_cls(tmp_path_factory.mktemp("cls"))


def test_logits_are_the_deep_plus_the_wide_part() -> None:
    """One row holds both inputs; the model splits it back: tokens to the Transformer, features to the bag."""
    from hwlm.model.classifier import WideDeepClassifier, bow_features, wide_deep_row
    from hwlm.model.config import ModelConfig
    from hwlm.train.classify import collate

    torch.manual_seed(0)
    trunk = ModelConfig.from_name("debug", vocab_size=40)
    model = WideDeepClassifier(trunk, 3, "last", vocab_size=40, pad_id=0, embed=4, buckets=16).eval()
    texts = [([5, 9, 11, 3], "a good film"), ([7], "bad"), ([12, 13], "")]
    feats = [bow_features(ids, text, 40, 16) for ids, text in texts]
    rows = [wide_deep_row(ids, f, trunk.vocab_size) for (ids, _), f in zip(texts, feats)]
    x, mask = collate(rows, 0, False)
    ids, tok_mask = collate([ids for ids, _ in texts], 0, False)
    bag, bag_mask = collate(feats, 0, False)
    with torch.no_grad():
        want = model.deep(ids, tok_mask) + model.wide(bag, bag_mask)
        assert torch.allclose(model(x, mask), want, atol=1e-6)


@pytest.mark.slow
def test_wide_deep_learns_and_evaluates(cls_data: Path, tmp_path: Path) -> None:
    r = train_classifier(cls_cfg(cls_data, tmp_path / "run", max_steps=80), TaskConfig(**WD, wide_lr=2e-2),
                         say=lambda m: None)
    assert r.steps == 80
    ev = evaluate_classifier(tmp_path / "run", device="cpu")
    assert ev.report["accuracy"] >= 0.8, ev.report  # chance is 1/3
    spec = json.loads((tmp_path / "run" / "config.json").read_text())["classifier"]
    assert spec["kind"] == "wide-deep" and spec["wide"]["buckets"] == 512
    # tokens/s counts the Transformer's tokens only (the bag's features ride in the same rows)
    assert r.tokens < r.examples * 14


def test_warm_start_from_an_lm_and_a_bag_of_words(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    from hwlm.train.classify_load import load_classifier
    from hwlm.train.load import load_model

    data = prepare_cls(tmp_path / "c", n=150, tokenizer=tiny_data / "tokenizer.json")
    bow = cls_cfg(data, tmp_path / "bow", max_steps=5, eval_interval=0)
    train_classifier(bow, TaskConfig(task="classify", classifier="bow", embed=6, buckets=256), say=lambda m: None)
    notes: list[str] = []
    cfg = cls_cfg(data, tmp_path / "wd", max_steps=1, lr=1e-12, min_lr=1e-12, warmup=0, eval_interval=0)
    # embed and buckets come from the bag-of-words run, whatever the task says
    task = TaskConfig(**WD, init_from=tiny_run, wide_from=tmp_path / "bow")
    train_classifier(cfg, task, say=notes.append)
    assert any("bag of words initialized from" in n for n in notes) and any("trunk initialized" in n for n in notes)
    got = load_classifier(tmp_path / "wd").model
    want_bow = load_classifier(tmp_path / "bow").model
    assert got.wide.embed.weight.shape == (want_bow.embed.weight.shape[0], 6)
    for name in ("embed.weight", "head.weight", "head.bias"):
        assert torch.allclose(got.wide.get_parameter(name), want_bow.get_parameter(name), atol=1e-6), name
    lm = load_model(tiny_run).model
    assert torch.allclose(got.deep.trunk.get_parameter("h.1.attn.c_attn.weight"),
                          lm.get_parameter("h.1.attn.c_attn.weight"), atol=1e-6)


def test_resume_is_bit_identical_and_keeps_the_wide_rate(cls_data: Path, tmp_path: Path) -> None:
    task = TaskConfig(**WD, wide_lr=3e-2)
    cfg = cls_cfg(cls_data, tmp_path / "a", max_steps=12, eval_interval=0, ckpt_interval=6)
    train_classifier(cfg, task, say=lambda m: None)
    train_classifier(dataclasses.replace(cfg, out=tmp_path / "b"), task, say=lambda m: None, stop_at_step=6)
    train_classifier(dataclasses.replace(cfg, out=tmp_path / "b", resume="auto"), task, say=lambda m: None)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "checkpoints" / "step-0000012" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "step-0000012" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert log and log[-1]["step"] == 12


def _one_line_error(capsys: pytest.CaptureFixture, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err and err[-1].startswith("hwlm: error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_wide_deep_input(cls_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="--wide-from starts the bag of words of --classifier wide-deep"):
        TaskConfig(task="classify", classifier="bow", wide_from=tmp_path)
    with pytest.raises(ConfigError, match="--lora-rank applies to the Transformer classifier, not wide-deep"):
        TaskConfig(**WD, lora_rank=4)
    lstm = tmp_path / "lstm"
    train_classifier(cls_cfg(cls_data, lstm, max_steps=1, eval_interval=0),
                     TaskConfig(task="classify", classifier="lstm", embed=8, hidden=8), say=lambda m: None)
    base = ["train", "--task", "classify", "--classifier", "wide-deep", "--data", str(cls_data), "--max-steps", "1",
            "--device", "cpu", "--no-progress", "--model", "debug"]
    msg = _one_line_error(capsys, main([*base, "--out", str(tmp_path / "x"), "--wide-from", str(lstm)]))
    assert "is not a bag-of-words run" in msg and "'lstm'" in msg
    other = prepare_cls(tmp_path / "o", n=150, vocab_size=280)
    bow = tmp_path / "bow"
    train_classifier(cls_cfg(other, bow, max_steps=1, eval_interval=0),
                     TaskConfig(task="classify", classifier="bow", buckets=64), say=lambda m: None)
    msg = _one_line_error(capsys, main([*base, "--out", str(tmp_path / "y"), "--wide-from", str(bow)]))
    assert "another tokenizer or other labels" in msg
    assert main([*base, "--out", str(tmp_path / "z"), "--buckets", "64", "--embed", "4"]) == 0
    src = write_jsonl(tmp_path / "new.jsonl", rows(7, seed=3))
    assert main(["predict", str(src), "--run", str(tmp_path / "z"), "--out", str(tmp_path / "p.jsonl"),
                 "--no-progress"]) == 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 7
    capsys.readouterr()
    msg = _one_line_error(capsys, main(["export", "--run", str(tmp_path / "z"), "--format", "hf", "--out",
                                        str(tmp_path / "hf")]))
    assert "wide-deep classifier" in msg


def test_length_pools_batch_texts_of_similar_length_and_cover_each_epoch() -> None:
    from hwlm.train.classify import Examples

    lengths = [(i * 37) % 101 for i in range(1000)]
    plain, pooled = Examples(1000, 10, 0), Examples(1000, 10, 0, lengths, pool=20)
    spread = {}
    for name, loader in (("plain", plain), ("pooled", pooled)):
        batches = [loader.next_indices() for _ in range(100)]  # one epoch
        assert sorted(i for b in batches for i in b) == list(range(1000)), name  # every example once
        spread[name] = sum(max(lengths[i] for i in b) * 10 - sum(lengths[i] for i in b) for b in batches)
    assert spread["pooled"] < spread["plain"] / 5  # padding of the pooled batches is a fraction of the random ones'
    again = Examples(1000, 10, 0, lengths, pool=20)
    again.load_state_dict({"epoch": 1, "pos": 30})
    pooled.load_state_dict({"epoch": 1, "pos": 30})
    assert again.next_indices() == pooled.next_indices()  # a function of (seed, epoch): resume is exact
    with pytest.raises(ConfigError, match="length_pool"):
        TaskConfig(task="classify", length_pool=-1)
