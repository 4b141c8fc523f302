"""Evaluation: loss, perplexity and bits per byte on a prepared split and on raw files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hwlm.errors import ConfigError, DataError
from hwlm.evaluate import EvalConfig, evaluate
from hwlm.train import train
from hwlm.train.load import decode_stream, load_model, stream_text
from tiny import prepare_tiny, tiny_cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    data = prepare_tiny(root)
    out = root / "run"
    train(tiny_cfg(data, out, max_steps=30, lr=1e-2, eval_interval=0, ckpt_interval=0))
    return out, root


def test_val_split(run: tuple[Path, Path]) -> None:
    out, root = run
    r = evaluate(EvalConfig(run=out, device="cpu"))
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    val = manifest["splits"]["val"]
    assert r.bytes == val["bytes"] and 0 < r.tokens < val["tokens"]
    assert r.perplexity == pytest.approx(math.exp(r.loss))
    # nats over the whole split (mean loss x split tokens) / ln 2 / split bytes
    assert r.bits_per_byte == pytest.approx(r.loss * val["tokens"] / math.log(2) / val["bytes"])
    assert r.loss < math.log(300)   # better than uniform over the vocabulary: it learned something


def test_raw_files_count_normalized_bytes(run: tuple[Path, Path]) -> None:
    out, root = run
    files = sorted((root / "text").glob("*.txt"))
    r = evaluate(EvalConfig(run=out, files=[str(f) for f in files], device="cpu"))
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    # every file is one document; its normalized bytes are what prepare counted in both splits
    assert r.bytes == manifest["splits"]["train"]["bytes"] + manifest["splits"]["val"]["bytes"]
    all_tokens = manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"]
    assert r.tokens == all_tokens - 1   # every token but the first is predicted exactly once
    assert r.bits_per_byte == pytest.approx(r.loss * r.tokens / math.log(2) / r.bytes)


def test_max_batches_limits_tokens(run: tuple[Path, Path]) -> None:
    r = evaluate(EvalConfig(run=run[0], max_batches=1, batch_size=2, device="cpu"))
    assert r.tokens == 2 * 32


def test_bad_input(run: tuple[Path, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(DataError, match="no text to evaluate"):
        evaluate(EvalConfig(run=run[0], files=[str(empty)], device="cpu"))
    with pytest.raises(ConfigError, match="no run given"):
        evaluate(EvalConfig())
    with pytest.raises(ConfigError, match="either --data .* or text FILES"):
        EvalConfig(run=run[0], data=tmp_path, files=["x"])


def test_other_tokenizer_is_refused(run: tuple[Path, Path], tmp_path: Path) -> None:
    from hwlm.data import PrepareConfig, prepare
    other = prepare(PrepareConfig(inputs=[str(run[1] / "text")], out=tmp_path / "d", vocab_size=280)).out
    with pytest.raises(DataError, match="tokenized with another tokenizer"):
        evaluate(EvalConfig(run=run[0], data=other, device="cpu"))


def test_decode_stream_never_splits_characters(run: tuple[Path, Path]) -> None:
    tok = load_model(run[0]).tokenizer
    text = "Café ünïcode — 日本語 🎉 ok"
    ids = tok.encode(text, add_special_tokens=False).ids
    pieces = list(decode_stream(tok, ids))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 1


def test_stream_text_is_seeded(run: tuple[Path, Path]) -> None:
    loaded = load_model(run[0])
    a = "".join(stream_text(loaded, "The cat", 20, temperature=1.0, seed=3))
    b = "".join(stream_text(loaded, "The cat", 20, temperature=1.0, seed=3))
    assert a == b and len(a) > 0
