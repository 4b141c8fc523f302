"""prepare(): manifest and shards, deterministic split, dtype choice, resume, parallel parity, bad input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from hwlm.data import PrepareConfig, load_manifest, load_tokenizer, prepare
from hwlm.data.pipeline import PROGRESS_FILE, split_of
from hwlm.data.shards import dtype_for_vocab
from hwlm.errors import ConfigError, DataError, ResourceError


def _corpus(tmp_path: Path, n: int = 60) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(n):
        (folder / f"doc{i:03d}.txt").write_text(f"Document {i}: " + "naïve café 北京 😀 words and more words. " * (i % 7 + 1))
    return folder


def _cfg(tmp_path: Path, inputs: list[str], out: str = "out", **kw) -> PrepareConfig:
    base = dict(inputs=inputs, out=tmp_path / out, vocab_size=300, tokens_per_shard=400, batch_chars=300)
    return PrepareConfig(**{**base, **kw})


def _shard_hashes(manifest: dict) -> dict[str, list[str]]:
    return {s: [e["sha256"] for e in v["shards"]] for s, v in manifest["splits"].items()}


def test_manifest_shards_and_round_trip(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    res = prepare(_cfg(tmp_path, [str(corpus)], normalize="none", strip_control=False))
    out = res.out
    m = load_manifest(out)
    assert set(m) == {"version", "dtype", "vocab_size", "eot_id", "tokenizer_sha256", "splits", "invalid_utf8",
                      "config", "val_source"}
    assert m["version"] == 1 and m["dtype"] == "uint16" and m["eot_id"] == 0
    assert m["tokenizer_sha256"] == hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    assert m["invalid_utf8"] == {"count": 0, "first": None}
    assert m["config"]["vocab_size"] == 300 and m["config"]["inputs"] == [str(corpus)]
    texts = [p.read_text() for p in sorted(corpus.iterdir())]
    tok = load_tokenizer(out)
    for split, info in m["splits"].items():
        assert set(info) == {"tokens", "bytes", "documents", "shards"}
        ids = []
        for e in info["shards"]:
            raw = (out / e["file"]).read_bytes()
            assert e["sha256"] == hashlib.sha256(raw).hexdigest() and len(raw) == 2 * e["tokens"]
            assert e["file"].startswith(f"{split}/shard-")
            ids.extend(np.frombuffer(raw, dtype="<u2").tolist())
        assert all(e["tokens"] == 400 for e in info["shards"][:-1])
        assert len(ids) == info["tokens"] and ids.count(0) == info["documents"] and ids[-1] == 0
        want = [t for i, t in enumerate(texts) if split_of(i, 0, 0.1) == split]
        docs = tok.decode(ids, skip_special_tokens=False).split("<|endoftext|>")[:-1]
        assert docs == want
        assert info["bytes"] == sum(len(t.encode()) for t in want)
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 60
    assert not (out / PROGRESS_FILE).exists() and not list(out.glob("*/.pending-*"))


def test_split_is_deterministic_and_has_both_sides() -> None:
    a = [split_of(i, 7, 0.2) for i in range(2000)]
    assert a == [split_of(i, 7, 0.2) for i in range(2000)]
    assert a[:2] == ["train", "val"]
    assert 0.15 < a.count("val") / len(a) < 0.25
    assert a != [split_of(i, 8, 0.2) for i in range(2000)]


def test_two_documents_make_both_splits_and_invalid_utf8_reported(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.txt").write_bytes(b"second \xff document")
    res = prepare(_cfg(tmp_path, [str(tmp_path / "*.txt")], val_fraction=0.01))
    m = res.manifest
    assert m["splits"]["train"]["documents"] == 1 and m["splits"]["val"]["documents"] == 1
    assert m["invalid_utf8"] == {"count": 1, "first": {"file": str(tmp_path / "b.txt"), "offset": 7}}


def test_dtype_choice_and_uint32_with_a_big_reused_tokenizer(tmp_path: Path) -> None:
    assert (dtype_for_vocab(65536), dtype_for_vocab(65537)) == ("uint16", "uint32")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(sorted(alphabet))}}
    vocab.update({f"filler{i}": len(vocab) + i for i in range(70_000 - len(vocab))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    big = tmp_path / "big.json"
    tok.save(str(big))
    (tmp_path / "t.txt").write_text("hello world")
    (tmp_path / "u.txt").write_text("über 世界")
    res = prepare(_cfg(tmp_path, [str(tmp_path / "t.txt"), str(tmp_path / "u.txt")], tokenizer=big))
    assert res.manifest["dtype"] == "uint32" and res.manifest["vocab_size"] == 70_000
    ids = np.fromfile(res.out / "val/shard-00000.bin", dtype="<u4").tolist()
    assert tok.decode(ids[:-1]) == "über 世界" and ids[-1] == 0


def test_interrupted_prepare_resumes_to_identical_shards(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    clean = prepare(_cfg(tmp_path, [str(corpus)], out="clean"))

    class Stop(Exception):
        pass

    def stop_after_3(shards: int) -> None:
        if shards >= 3:
            raise Stop

    cfg = _cfg(tmp_path, [str(corpus)], out="run")
    with pytest.raises(Stop):
        prepare(cfg, _after_checkpoint=stop_after_3)
    assert not (cfg.out / "manifest.json").exists() and (cfg.out / PROGRESS_FILE).exists()
    done = json.loads((cfg.out / PROGRESS_FILE).read_text())["raw_done"]
    assert 0 < done < 60
    with pytest.raises(ConfigError, match="cannot resume: .* other inputs or settings"):
        prepare(_cfg(tmp_path, [str(corpus)], out="run", seed=5, resume=True))
    res = prepare(_cfg(tmp_path, [str(corpus)], out="run", resume=True))
    assert res.resumed
    assert _shard_hashes(res.manifest) == _shard_hashes(clean.manifest)
    assert res.manifest["splits"] == clean.manifest["splits"]
    assert res.manifest["tokenizer_sha256"] == clean.manifest["tokenizer_sha256"]
    assert not (cfg.out / PROGRESS_FILE).exists() and not list(cfg.out.glob("*/.pending-*"))


@pytest.mark.slow
def test_two_worker_processes_give_identical_output(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, n=30)
    one = prepare(_cfg(tmp_path, [str(corpus)], out="one"))
    two = prepare(_cfg(tmp_path, [str(corpus)], out="two", workers=2, tokenizer=one.out / "tokenizer.json"))
    assert _shard_hashes(two.manifest) == _shard_hashes(one.manifest)


def test_bad_input_messages_and_nothing_half_written(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text(" \n\x00\x01\n")
    with pytest.raises(DataError, match=r"no text in .*empty.txt after cleaning"):
        prepare(_cfg(tmp_path, [str(tmp_path / "empty.txt")]))
    assert not (tmp_path / "out" / "manifest.json").exists()
    (tmp_path / "a.txt").write_text("some text")
    with pytest.raises(DataError, match=r"tokenizer file .*nope.json does not exist"):
        prepare(_cfg(tmp_path, [str(tmp_path / "a.txt")], tokenizer=tmp_path / "nope.json"))
    with pytest.raises(DataError, match=r"--out .*a.txt is a file: choose a folder"):
        prepare(_cfg(tmp_path, [str(tmp_path / "a.txt")], out="a.txt"))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ResourceError, match="permission denied; choose a writable --out folder"):
            prepare(_cfg(tmp_path, [str(tmp_path / "a.txt")], out="locked/sub"))
    elif Path("/proc/self").is_dir():  # root may write anywhere on disk, but not under /proc
        with pytest.raises(ResourceError, match=r"cannot write /proc/hwlm-no/out"):
            prepare(_cfg(tmp_path, [str(tmp_path / "a.txt")], out="/proc/hwlm-no/out"))


@pytest.mark.parametrize("kw, msg", [
    ({"vocab_size": 256}, r"vocab_size is 256; it must be between 257 \(256 bytes \+ 1 special tokens\)"),
    ({"val_fraction": 0.0}, r"val_fraction is 0.0; it must be strictly between 0 and 1"),
    ({"workers": 0}, r"workers is 0; it must be at least 1"),
    ({"special_tokens": []}, r"special_tokens is \[\]: give at least one non-empty token"),
    ({"special_tokens": ["<a>", "<a>"]}, r"has duplicates"),
])
def test_config_validation(kw: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        PrepareConfig(**kw)
