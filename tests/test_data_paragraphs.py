"""One text file is enough to train on: plain text is cut into documents at blank lines, and when
no document lands in val (one paragraph), val is the tail of the token stream (nanoGPT's split)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import hwlm.data.readers as readers
from hwlm.cli import main
from hwlm.data import PrepareConfig, load_manifest, prepare
from hwlm.data.normalize import normalize
from hwlm.data.readers import Utf8Stats, iter_raw_documents, resolve_inputs
from tiny import WORDS

FAST = ["--model", "debug", "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--no-progress",
        "--no-tensorboard", "--eval-batches", "2", "--eval-interval", "0", "--peak-flops", "1e9",
        "--max-steps", "3"]
HAN = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你"


def _docs(path: Path, **kw) -> list[str]:
    return list(iter_raw_documents(resolve_inputs([str(path)]), "text", kw.pop("max_doc_chars", 10**6),
                                   Utf8Stats(), **kw))


def test_blank_lines_cut_paragraphs_and_runs_of_them_count_once(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("First line\nsame paragraph\n\n\n  \t\nSecond.\r\n\r\n    indented third\n\n", encoding="utf-8")
    assert _docs(f) == ["First line\nsame paragraph", "Second.\r", "    indented third"]
    assert _docs(f, paragraphs=False) == [f.read_bytes().decode("utf-8")]


def test_paragraphs_do_not_depend_on_where_reads_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    parts = []
    for _ in range(200):
        parts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))))
        parts.append(rng.choice(["\n", "\n\n", "\n \n", "\n\n\n", " \n\t\n  "]))
    f = tmp_path / "b.txt"
    f.write_text("".join(parts), encoding="utf-8")
    whole = _docs(f)
    assert len(whole) > 50
    for chunk in (1, 2, 3, 7, 64):
        monkeypatch.setattr(readers, "_CHUNK", chunk)
        assert _docs(f) == whole, chunk


def test_a_paragraph_longer_than_max_doc_chars_is_still_cut(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("short\n\n" + "x" * 250 + "\n\nend", encoding="utf-8")
    assert [len(d) for d in _docs(f, max_doc_chars=100)] == [5, 100, 100, 50, 3]


def _chinese_article(path: Path, n_bytes: int = 40_000) -> None:
    """Paragraphs on single lines (no blank line anywhere), as a web article is often saved."""
    rng = random.Random(0)
    lines, size = [], 0
    while size < n_bytes:
        line = "，".join("".join(rng.choice(HAN) for _ in range(rng.randint(4, 12))) for _ in range(6)) + "。"
        lines.append(line)
        size += len(line.encode("utf-8")) + 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _english_book(path: Path, n_bytes: int = 400_000) -> None:
    rng = random.Random(1)
    paras, size, chapter = [], 0, 0
    while size < n_bytes:
        if len(paras) % 40 == 0:
            chapter += 1
            paras.append(f"CHAPTER {chapter}")
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
                     for _ in range(rng.randint(2, 7))]
        paras.append(" ".join(sentences))
        size += len(paras[-1]) + 2
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")


@pytest.mark.slow
def test_one_chinese_article_gets_a_val_split_from_the_tail_and_trains(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    text, data = tmp_path / "article.txt", tmp_path / "data"
    _chinese_article(text)
    assert 39_000 < text.stat().st_size < 41_000
    assert main(["prepare", str(text), "--out", str(data), "--vocab-size", "512"]) == 0
    out = capsys.readouterr().out
    assert "note: no document fell into the val split (1 document(s) in all), so val is the last" in out
    m = load_manifest(data)
    train, val = m["splits"]["train"]["tokens"], m["splits"]["val"]["tokens"]
    assert m["val_source"] == "train_tail"
    assert val == -(-(train + val) // 10)  # the last 10% (val_fraction 0.1), rounded up
    total_bytes = m["splits"]["train"]["bytes"] + m["splits"]["val"]["bytes"]
    # The bytes moved to val are counted exactly: the two splits still add up to the normalized text.
    assert total_bytes == len(normalize(text.read_text(encoding="utf-8"), "nfkc", True).encode("utf-8"))
    assert 0.05 < m["splits"]["val"]["bytes"] / total_bytes < 0.15
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *FAST]) == 0
    assert "val loss" in capsys.readouterr().out


@pytest.mark.slow
def test_one_english_book_is_cut_into_paragraphs_and_trains(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text, data = tmp_path / "book.txt", tmp_path / "data"
    _english_book(text)
    assert 399_000 < text.stat().st_size < 402_000
    result = prepare(PrepareConfig(inputs=[str(text)], out=data, vocab_size=512))
    docs = result.manifest["splits"]
    assert result.notes == [] and result.manifest["val_source"] == "documents"
    n_paras = text.read_text(encoding="utf-8").count("\n\n") + 1
    assert docs["train"]["documents"] + docs["val"]["documents"] == n_paras
    assert 0.05 < docs["val"]["documents"] / n_paras < 0.15
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *FAST]) == 0
    assert "val loss" in capsys.readouterr().out
