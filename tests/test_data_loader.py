"""TokenLoader and eval_batches: determinism, rank slicing, resume, windows across shards, damage checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hwlm.data import PrepareConfig, TokenLoader, eval_batches, prepare
from hwlm.errors import DataError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    # the built-in corpus, in small shards so that many windows cross a shard boundary
    prepare(PrepareConfig(out=out, vocab_size=300, tokens_per_shard=1000, tokenizer_train_chars=50_000))
    return out


def _all_tokens(data_dir: Path, split: str) -> np.ndarray:
    files = sorted((data_dir / split).glob("shard-*.bin"))
    return np.concatenate([np.fromfile(f, dtype="<u2") for f in files]).astype(np.int64)


def test_batches_are_deterministic_shifted_windows(data_dir: Path) -> None:
    a, b = TokenLoader(data_dir, "train", 4, 64, seed=3), TokenLoader(data_dir, "train", 4, 64, seed=3)
    flat = _all_tokens(data_dir, "train")
    for _ in range(3):
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert xa.shape == ya.shape == (4, 64) and xa.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])
    starts = a.starts_for(0)
    x0, _ = TokenLoader(data_dir, "train", 4, 64, seed=3).next_batch()
    assert np.array_equal(x0.numpy(), np.stack([flat[s:s + 64] for s in starts]))
    assert not torch.equal(TokenLoader(data_dir, "train", 4, 64, seed=4).next_batch()[0], x0)


def test_two_ranks_of_b_equal_one_rank_of_2b(data_dir: Path) -> None:
    one = TokenLoader(data_dir, "train", 4, 32, seed=1)
    ranks = [TokenLoader(data_dir, "train", 2, 32, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, y = one.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))


def test_state_dict_resumes_the_sequence(data_dir: Path) -> None:
    a = TokenLoader(data_dir, "train", 2, 16)
    a.next_batch(), a.next_batch()
    state = a.state_dict()
    want = a.next_batch()
    b = TokenLoader(data_dir, "train", 2, 16)
    b.load_state_dict(state)
    assert state["step"] == 2 and all(torch.equal(u, v) for u, v in zip(b.next_batch(), want))


def test_window_spanning_a_shard_boundary(data_dir: Path) -> None:
    loader = TokenLoader(data_dir, "train", 1, 50)
    flat = _all_tokens(data_dir, "train")
    assert np.array_equal(loader.stream.window(980, 50), flat[980:1030])


def test_eval_batches_are_sequential(data_dir: Path) -> None:
    flat = _all_tokens(data_dir, "val")
    batches = list(eval_batches(data_dir, "val", 3, 40))
    n_windows = (len(flat) - 1) // 40
    assert sum(len(x) for x, _ in batches) == n_windows
    x, y = batches[0]
    assert np.array_equal(x[1].numpy(), flat[40:80]) and np.array_equal(y[1].numpy(), flat[41:81])
    assert len(list(eval_batches(data_dir, "val", 3, 40, max_batches=2))) == 2


def test_damaged_or_missing_data(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(DataError, match=r"no manifest.json in .*: run `hwlm prepare --out"):
        TokenLoader(tmp_path, "train", 1, 8)
    with pytest.raises(DataError, match=r"split 'test' is not in .*; choose one of train, val"):
        TokenLoader(data_dir, "test", 1, 8)
    with pytest.raises(DataError, match=r"split 'val' has \d+ tokens, fewer than block_size\+1"):
        TokenLoader(data_dir, "val", 1, 10**7)
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    shard = copy / "train" / "shard-00001.bin"
    raw = bytearray(shard.read_bytes())
    raw[0] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"shard-00001.bin does not match its sha256 in the manifest"):
        TokenLoader(copy, "train", 1, 8)
    TokenLoader(copy, "train", 1, 8, verify=False)  # skipping the check is allowed, for speed
    shard.unlink()
    with pytest.raises(DataError, match=r"shard-00001.bin listed in the manifest is missing; rerun hwlm prepare"):
        TokenLoader(copy, "train", 1, 8, verify=False)
