"""Classifier training: every model learns the generated task, resume is exact, seeds, the CLI, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from classify_tiny import cls_cfg, prepare_cls, rows, write_csv, write_jsonl
from hwlm.cli import main
from hwlm.errors import ConfigError, DataError
from hwlm.evaluate_classify import evaluate_classifier
from hwlm.train.classify import train_classifier
from hwlm.train.task_config import TaskConfig


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_cls(tmp_path_factory.mktemp("cls"))


def _one_line_error(capsys: pytest.CaptureFixture, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err and err[-1].startswith("hwlm: error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.slow
@pytest.mark.parametrize("kind, pooling", [("bow", "last"), ("lstm", "last"), ("transformer", "last"),
                                           ("transformer", "mean")])
def test_each_model_learns(kind: str, pooling: str, cls_data: Path, tmp_path: Path) -> None:
    steps = 120 if kind == "transformer" else 60
    r = train_classifier(cls_cfg(cls_data, tmp_path / "run", max_steps=steps),
                         TaskConfig(task="classify", classifier=kind, pooling=pooling), say=lambda m: None)
    assert r.steps == steps and r.last_checkpoint is not None
    ev = evaluate_classifier(tmp_path / "run", device="cpu")
    assert ev.report["accuracy"] >= 0.8, ev.report  # chance is 1/3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == steps and "val_macro_f1" in log[-1]
    assert (tmp_path / "run" / "eval-test.json").is_file()


def test_digits_mlp_reaches_097(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    from hwlm.data.classify import prepare_classify
    from hwlm.data.config import PrepareConfig

    prepare_classify(PrepareConfig(task="classify", inputs=["builtin:digits"], out=tmp_path / "d"))
    cfg = cls_cfg(tmp_path / "d", tmp_path / "mlp", max_steps=None, batch_size=64, lr=3e-3, min_lr=1e-4, warmup=10,
                  eval_interval=0, ckpt_interval=0, log_interval=50)
    train_classifier(cfg, TaskConfig(task="classify", classifier="mlp", hidden=256, epochs=30), say=lambda m: None)
    assert evaluate_classifier(tmp_path / "mlp", device="cpu").report["accuracy"] >= 0.97


def test_resume_is_bit_identical(cls_data: Path, tmp_path: Path) -> None:
    task = TaskConfig(task="classify", classifier="bow", dropout=0.2, buckets=1024)
    cfg = cls_cfg(cls_data, tmp_path / "whole", max_steps=20, eval_interval=10, ckpt_interval=10)
    train_classifier(cfg, task, say=lambda m: None)
    part = dataclasses.replace(cfg, out=tmp_path / "part")
    train_classifier(part, task, say=lambda m: None, stop_at_step=7)
    train_classifier(dataclasses.replace(part, resume="auto"), task, say=lambda m: None)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "whole" / "checkpoints" / "step-0000020" / "model.safetensors")
    b = load_file(tmp_path / "part" / "checkpoints" / "step-0000020" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "a resumed log repeats steps"


def test_seeds_give_mean_and_spread(cls_data: Path, tmp_path: Path) -> None:
    task = TaskConfig(task="classify", classifier="bow", seeds=2, buckets=1024)
    r = train_classifier(cls_cfg(cls_data, tmp_path / "s", max_steps=15), task, say=lambda m: None)
    assert [Path(s["dir"]).name for s in r.seed_runs] == ["seed-1337", "seed-1338"]
    ev = evaluate_classifier(tmp_path / "s", device="cpu")
    assert ev.seeds["seeds"] == 2 and len(ev.per_seed) == 2
    accs = [p["report"]["accuracy"] for p in ev.per_seed]
    assert ev.seeds["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)


@pytest.mark.slow
def test_cli_train_eval_predict(cls_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--task", "classify", "--classifier", "lstm", "--class-weights", "balanced", "--data",
               str(cls_data), "--out", str(out), "--max-steps", "40", "--batch-size", "32", "--lr", "0.005",
               "--device", "cpu", "--no-progress", "--no-tensorboard", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["val_accuracy"] > 0.5
    assert main(["eval", "--run", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "macro avg" in text and "weighted avg" in text and "confusion matrix" in text
    assert main(["eval", "--run", str(out), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"].startswith("val split")
    src = write_csv(tmp_path / "new.csv", rows(30, seed=9))
    for name in ("p.jsonl", "p.csv"):
        assert main(["predict", str(src), "--run", str(out), "--out", str(tmp_path / name), "--no-progress"]) == 0
    preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(preds) == 30 and all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in preds)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "text,label,p_mid,p_neg,p_pos"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "so so", "label": "meh"}] + rows(5))
    msg = _one_line_error(capsys, main(["eval", "--run", str(out), str(bad)]))
    assert "absent from the training split" in msg and "'meh'" in msg


def test_init_from_lm_run_and_lora(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from hwlm.train.classify_load import load_classifier
    from hwlm.train.load import load_model

    data = prepare_cls(tmp_path / "c", n=150, tokenizer=tiny_data / "tokenizer.json")
    full = cls_cfg(data, tmp_path / "full", max_steps=1, lr=1e-12, min_lr=1e-12, warmup=0, eval_interval=0)
    train_classifier(full, TaskConfig(task="classify", init_from=tiny_run), say=lambda m: None)
    lm = load_model(tiny_run).model
    got = load_classifier(tmp_path / "full").model.trunk
    for name in ("wte.weight", "h.1.attn.c_attn.weight", "ln_f.weight"):  # the LM's weights, not a fresh init
        assert torch.allclose(got.get_parameter(name), lm.get_parameter(name), atol=1e-6), name
    lora = dataclasses.replace(full, out=tmp_path / "lora", max_steps=10, lr=1e-2, min_lr=1e-3)
    r = train_classifier(lora, TaskConfig(task="classify", init_from=tiny_run, lora_rank=4), say=lambda m: None)
    assert r.params > 0
    ev = evaluate_classifier(tmp_path / "lora", device="cpu")  # adapters merged on load
    assert 0.0 <= ev.report["accuracy"] <= 1.0


def test_init_from_run_with_another_tokenizer(tiny_run: Path, cls_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", "--task", "classify", "--init-from", str(tiny_run), "--data", str(cls_data), "--out",
               str(tmp_path / "x"), "--max-steps", "1", "--device", "cpu", "--no-progress"])
    assert "uses another tokenizer" in _one_line_error(capsys, rc)
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_wrong_data_for_the_model(tiny_data: Path, cls_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a classification folder"):
        train_classifier(cls_cfg(tiny_data, tmp_path / "a"), TaskConfig(task="classify"), say=lambda m: None)
    with pytest.raises(ConfigError, match="takes feature rows"):
        train_classifier(cls_cfg(cls_data, tmp_path / "b"), TaskConfig(task="classify", classifier="mlp"),
                         say=lambda m: None)


@pytest.mark.parametrize("name", ["lstm-sentences", "digits-mlp"])
def test_classification_recipes_train_one_step(name: str, cls_data: Path, tmp_path: Path) -> None:
    from hwlm.config import resolve
    from hwlm.data.config import PrepareConfig
    from hwlm.train.config import TrainConfig

    prep = resolve(PrepareConfig, file=name, section="prepare", overrides={"out": tmp_path / "d"})
    assert prep.task == "classify"
    data = cls_data
    if name == "digits-mlp":
        pytest.importorskip("sklearn")
        from hwlm.data.classify import prepare_classify

        prepare_classify(dataclasses.replace(prep, inputs=["builtin:digits"]))
        data = tmp_path / "d"
    task = resolve(TaskConfig, file=name, section="task")
    cfg = resolve(TrainConfig, file=name, section="train", overrides=dict(
        data=data, out=tmp_path / "run", max_steps=1, device="cpu", progress=False, tensorboard=False))
    assert train_classifier(cfg, task, say=lambda m: None).steps == 1


def test_lstm_on_the_padded_batch_equals_packed_rows() -> None:
    """The state at each row's last real token of the padded run is the packed run's final state."""
    from torch import nn

    from hwlm.model.classifier import LSTMClassifier

    torch.manual_seed(0)
    model = LSTMClassifier(50, 3, 0, embed=8, hidden=12, layers=2).eval()
    lengths = torch.tensor([7, 1, 4, 7, 2])
    mask = torch.arange(7)[None] < lengths[:, None]
    ids = torch.randint(1, 50, (5, 7)).masked_fill(~mask, 0)
    packed = nn.utils.rnn.pack_padded_sequence(model.embed(ids), lengths, batch_first=True, enforce_sorted=False)
    _, (h, _) = model.lstm(packed)
    with torch.no_grad():
        assert torch.allclose(model(ids, mask), model.head(h[-1]), atol=1e-6)


def test_bag_of_words_features() -> None:
    from hwlm.model.classifier import BagOfWords, bow_features, bow_rows, build_classifier

    ids = [3, 4, 3, 4]
    old = bow_features(ids, "ignored", vocab_size=10, buckets=8, features="tokens")
    assert old[:4] == ids and len(old) == 7 and all(10 <= f < 18 for f in old[4:])  # every bigram counted
    new = bow_features(ids, "Great GREAT film, 很好", vocab_size=10, buckets=8)
    assert len(new) == len(set(new)) and set(ids) <= set(new)  # each row once
    words = [f for f in new if f >= 18]  # words and word bigrams: the second hashed range
    # great, film, ",", 很, 好 (CJK one character each), then great/great ... 很/好: at most 5 + 6 rows, hashed to 8
    assert words and all(f < bow_rows(10, 8, 2, "words") for f in words)
    assert bow_features([], "a", 10, 8) == bow_features([], "A", 10, 8)  # case folded
    spec = {"kind": "bow", "n_classes": 2, "vocab_size": 10, "pad_id": 0, "embed": 4, "ngrams": 2, "buckets": 8,
            "dropout": 0.0}
    assert build_classifier(spec).embed.weight.shape[0] == 18  # a run saved before "features": token rows only
    assert build_classifier({**spec, "features": "words"}).embed.weight.shape[0] == 26
    model = BagOfWords(10, 2, 0, 4, 2, 8)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    logits = model(torch.tensor([[1, 2, 0], [0, 0, 0]]), mask)
    assert logits.shape == (2, 2) and torch.allclose(logits[1], model.head.bias)  # an empty bag pools to zeros


def test_resume_auto_moves_a_corrupt_newest_checkpoint_aside(cls_data: Path, tmp_path: Path) -> None:
    """Classifier runs resume through the same checkpoint.resume_checkpoint as language models."""
    task = TaskConfig(task="classify", classifier="bow", buckets=1024)
    cfg = cls_cfg(cls_data, tmp_path / "run", max_steps=20, eval_interval=0, ckpt_interval=10)
    train_classifier(cfg, task, say=lambda m: None)
    newest = tmp_path / "run" / "checkpoints" / "step-0000020" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    notes: list[str] = []
    r = train_classifier(dataclasses.replace(cfg, max_steps=24, resume="auto"), task, say=notes.append)
    assert r.steps == 24
    assert any(n.startswith("warning:") and "moved it aside to corrupt-step-0000020-" in n for n in notes), notes
    assert any("resumed from" in n and "step-0000010" in n for n in notes), notes
