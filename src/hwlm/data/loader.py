"""Batches of token windows from prepared shards, for training (random) and evaluation (sequential).

Shards are memory-mapped (``numpy.memmap``), so opening a split costs no memory and a batch reads
only its own windows. An encrypted data folder (``hwlm prepare --encrypt``) is read through
:class:`hwlm.data.shards.EncryptedShard` instead: each window decrypts only the 1 MiB chunks it
touches; ``key`` is the folder's key (None: ``$HWLM_DATA_KEY``, else one line naming ``--key-file``).
A split is treated as one stream: the shards of a split are concatenated in
order and **a window may span a shard boundary** (so every position is equally likely and no token
is wasted at shard ends).

Training batch ``step`` draws a *global* batch of ``batch_size * world_size`` window starts from an
RNG seeded by ``(seed, step)``; rank ``r`` keeps rows ``[r*B, (r+1)*B)``. Two ranks of ``B`` thus see
exactly the rows one rank of ``2B`` sees, and resuming needs nothing but the step.

    loader = TokenLoader("runs/data", "train", batch_size=8, block_size=256)
    x, y = loader.next_batch()            # (8, 256) int64 each; y is x shifted by one token
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from hwlm.data.shards import load_manifest, shard_arrays
from hwlm.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

__all__ = ["TokenLoader", "eval_batches", "TokenStream"]


class TokenStream:
    """The shards of one split seen as one array of token ids (read-only; memory-mapped, or decrypted
    by range when the folder is encrypted)."""

    def __init__(self, data_dir: str | Path, split: str, verify: bool = True, key: bytes | None = None) -> None:
        self.manifest = load_manifest(data_dir)
        self.arrays = shard_arrays(data_dir, self.manifest, split, verify=verify, key=key)
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])
        self.split = split

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start+length)`` as int64, stitched across shard boundaries."""
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            local = start + filled - int(self.starts[i])
            take = min(length - filled, len(self.arrays[i]) - local)
            out[filled:filled + take] = self.arrays[i][local:local + take]
            filled += take
            i += 1
        return out

    def need(self, block_size: int, what: str) -> None:
        if len(self) < block_size + 1:
            raise DataError(f"split {self.split!r} has {len(self)} tokens, fewer than block_size+1 = "
                            f"{block_size + 1} needed for {what}; lower the block size or add data")


def _check_sizes(batch_size: int, block_size: int) -> None:
    if batch_size < 1 or block_size < 1:
        raise ConfigError(f"batch_size {batch_size} and block_size {block_size} must both be at least 1")


class TokenLoader:
    """Random training windows, deterministic per (seed, step), sliced per rank."""

    def __init__(self, data_dir: str | Path, split: str, batch_size: int, block_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, verify: bool = True, key: bytes | None = None) -> None:
        _check_sizes(batch_size, block_size)
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world_size {world_size}: use 0 <= rank < world_size")
        self.stream = TokenStream(data_dir, split, verify=verify, key=key)
        self.stream.need(block_size, "one training window")
        self.batch_size, self.block_size = batch_size, block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.step = 0

    def starts_for(self, step: int) -> np.ndarray:
        """Window starts of the *global* batch of ``step`` (all ranks), shape (batch_size * world_size,)."""
        rng = np.random.default_rng([self.seed, step])
        high = len(self.stream) - self.block_size  # exclusive: the window needs block_size + 1 tokens
        return rng.integers(0, high, size=self.batch_size * self.world_size)

    def next_batch(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(x, y) int64 CPU tensors of shape (batch_size, block_size); advances the step."""
        import torch

        starts = self.starts_for(self.step)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        rows = np.stack([self.stream.window(int(s), self.block_size + 1) for s in starts])  # (B, T+1)
        self.step += 1
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state["step"]`` (the seed stays the one this loader was made with)."""
        self.step = int(state["step"])


def eval_batches(data_dir: str | Path, split: str, batch_size: int, block_size: int,
                 max_batches: int | None = None, verify: bool = True,
                 key: bytes | None = None) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
    """Sequential non-overlapping windows (window i starts at i*block_size); the last batch may be short."""
    import torch

    _check_sizes(batch_size, block_size)
    stream = TokenStream(data_dir, split, verify=verify, key=key)
    stream.need(block_size, "one evaluation window")
    n_windows = (len(stream) - 1) // block_size
    n_batches = -(-n_windows // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        first, last = b * batch_size, min((b + 1) * batch_size, n_windows)
        rows = np.stack([stream.window(w * block_size, block_size + 1) for w in range(first, last)])
        yield torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())
