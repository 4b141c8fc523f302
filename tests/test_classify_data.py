"""``hwlm prepare --task classify``: reading, deduplication before splitting, stratified seeded splits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classify_tiny import prepare_cls, rows, write_csv, write_jsonl
from hwlm.cli import main
from hwlm.data.classify import dedupe, prepare_classify, read_split, stratified_split
from hwlm.data.config import PrepareConfig


def _cfg(tmp_path: Path, *inputs: Path, **kw) -> PrepareConfig:
    return PrepareConfig(task="classify", inputs=[str(i) for i in inputs], out=tmp_path / "out", vocab_size=300, **kw)


def test_dedupe_drops_repeats_and_conflicting_texts() -> None:
    kept, removed = dedupe([("a", "x"), ("b", "y"), ("a", "x"), ("c", "x"), ("c", "y"), ("c", "x")])
    assert kept == [("a", "x"), ("b", "y")]
    assert removed == {"duplicates": 1, "conflicting_texts": 1, "conflicting_rows": 3}


def test_stratified_split_is_seeded_and_keeps_class_shares() -> None:
    labels = [0] * 80 + [1] * 20
    a = stratified_split(labels, 0.1, 0.2, seed=3)
    assert a == stratified_split(labels, 0.1, 0.2, seed=3)
    assert a != stratified_split(labels, 0.1, 0.2, seed=4)
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(100))
    test_labels = [labels[i] for i in a["test"]]
    assert test_labels.count(0) == 16 and test_labels.count(1) == 4


def test_prepare_removes_duplicates_before_splitting(tmp_path: Path) -> None:
    data = rows(200)
    twice = data + data[:40] + [{"text": data[0]["text"], "label": "mid" if data[0]["label"] != "mid" else "pos"}]
    out = prepare_classify(_cfg(tmp_path, write_jsonl(tmp_path / "r.jsonl", twice))).manifest
    texts = {s: read_split(tmp_path / "out", s)[0] for s in ("train", "val", "test")}
    everything = texts["train"] + texts["val"] + texts["test"]
    assert len(everything) == len(set(everything)), "a text sits in two splits"
    assert data[0]["text"] not in everything, "a text with two labels was kept"
    assert out["removed"]["conflicting_texts"] == 1
    distinct = {r["text"] for r in data}
    assert len(everything) == len(distinct) - 1
    assert out["labels"] == ["mid", "neg", "pos"] and out["label_map"] == {"mid": 0, "neg": 1, "pos": 2}
    assert sum(out["class_counts"]["train"].values()) == out["splits"]["train"]["examples"]
    assert out["imbalance"] >= 1.0


def test_csv_and_integer_labels(tmp_path: Path) -> None:
    data = [{"review": r["text"], "stars": str(["neg", "mid", "pos"].index(r["label"]) * 5)} for r in rows(120)]
    src = write_csv(tmp_path / "r.csv", data, ("review", "stars"))
    m = prepare_classify(_cfg(tmp_path, src, text_field="review", label_field="stars")).manifest
    assert m["labels"] == ["0", "5", "10"]  # integer labels in numeric order
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_digits_are_bundled_feature_rows(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    m = prepare_classify(PrepareConfig(task="classify", inputs=["builtin:digits"], out=tmp_path / "d")).manifest
    assert m["input"] == "features" and m["n_features"] == 64 and len(m["labels"]) == 10
    xs, ys = read_split(tmp_path / "d", "test")
    assert len(xs) == m["splits"]["test"]["examples"] and all(0.0 <= v <= 1.0 for v in xs[0])


@pytest.mark.parametrize("case, message", [
    ("no-label-column", "has no column 'label'"),
    ("one-class", "only one class"),
    ("single-example", "have a single example"),
])
def test_bad_input_is_one_line(case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = rows(60)
    if case == "no-label-column":
        src = write_csv(tmp_path / "r.csv", data, ("text",))
    elif case == "one-class":
        src = write_jsonl(tmp_path / "r.jsonl", [{"text": r["text"], "label": "pos"} for r in data])
    else:
        src = write_jsonl(tmp_path / "r.jsonl", data + [{"text": "a lone example", "label": "rare"}])
    out = tmp_path / "out"
    rc = main(["prepare", "--task", "classify", str(src), "--out", str(out), "--vocab-size", "300"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and message in err[0], err
    assert not out.exists(), "a failed prepare left a folder behind"


def test_cli_reports_counts_and_imbalance(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = write_jsonl(tmp_path / "r.jsonl", rows(90))
    assert main(["prepare", "--task", "classify", str(src), "--out", str(tmp_path / "o"), "--vocab-size", "300",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d["class_counts"]["train"]) == {"mid", "neg", "pos"} and d["imbalance"] >= 1.0


def test_tokenizer_reuse_copies_bytes(tmp_path: Path) -> None:
    first = prepare_cls(tmp_path / "a")
    again = prepare_cls(tmp_path / "b", tokenizer=first / "tokenizer.json")
    assert (first / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
