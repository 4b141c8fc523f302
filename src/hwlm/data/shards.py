"""Token shards on disk and the manifest that lists them.

A shard is raw little-endian token ids (``uint16`` when the vocabulary fits, else ``uint32``),
``tokens_per_shard`` of them except the last of a split. Shards are written atomically as soon
as they fill, so a preparation streams: memory holds one shard buffer per split, never the corpus.
``manifest.json`` is written last (see docs/architecture.md for its fields); a folder without it
is not a finished data set.

Encrypted (``hwlm prepare --encrypt``): each shard is ``shard-NNNNN.bin.enc``, the same bytes in
:mod:`hwlm.crypt`'s chunked AES-256-GCM; the manifest gains ``"encryption": {"scheme", "key_id"}`` and
each shard's ``sha256`` is that of the file as stored (the ciphertext: checked without the key).
Readers then get :class:`EncryptedShard` in place of a memory map: a slice decrypts only the 1 MiB
chunks it touches (the last two are cached).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hwlm.crypt import EncryptedReader, WrongKeyError, check_chunks, encrypt_bytes, key_for, read_encrypted
from hwlm.errors import DataError
from hwlm.io import atomic_write_bytes, sha256_file

__all__ = ["ShardWriter", "EncryptedShard", "dtype_for_vocab", "load_manifest", "shard_arrays", "data_key",
           "MANIFEST_FILE", "SPLITS", "MANIFEST_VERSION"]

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val")


def dtype_for_vocab(vocab_size: int) -> str:
    """``"uint16"`` when every id fits in 16 bits (vocab <= 65536), else ``"uint32"``."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _np_dtype(name: str) -> np.dtype:
    return np.dtype({"uint16": "<u2", "uint32": "<u4"}[name])


class ShardWriter:
    """Append token ids of one split; every full buffer becomes ``<split>/shard-NNNNN.bin``
    (``.bin.enc``, encrypted, when a ``key`` is given; the pending buffers of a resumable run too)."""

    def __init__(self, root: Path, split: str, dtype: str, tokens_per_shard: int,
                 on_shard: Callable[[dict[str, Any]], None] | None = None, key: bytes | None = None) -> None:
        self.root, self.split, self.dtype = Path(root), split, dtype
        self.key = key
        self.suffix = ".bin.enc" if key is not None else ".bin"
        self.buf = np.empty(tokens_per_shard, dtype=_np_dtype(dtype))
        self.fill = 0
        self.shards: list[dict[str, Any]] = []
        self.tokens = self.bytes = self.documents = 0
        self.on_shard = on_shard

    def add(self, ids: np.ndarray, nbytes: int) -> None:
        """Append one document's ids (already ending in end-of-text) and its UTF-8 byte count."""
        self.tokens += len(ids)
        self.bytes += nbytes
        self.documents += 1
        pos = 0
        while pos < len(ids):
            take = min(len(ids) - pos, len(self.buf) - self.fill)
            self.buf[self.fill:self.fill + take] = ids[pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == len(self.buf):
                self._flush()

    def _write(self, name: str, data: bytes) -> bytes:
        """Write ``data`` (encrypted with a key) to ``name`` atomically; return the bytes as stored."""
        stored = encrypt_bytes(data, self.key) if self.key is not None else data
        atomic_write_bytes(self.root / name, stored)
        return stored

    def _read(self, path: Path) -> np.ndarray:
        data = read_encrypted(path, self.key) if self.key is not None else path.read_bytes()
        return np.frombuffer(data, dtype=self.buf.dtype)

    def _flush(self) -> None:
        name = f"{self.split}/shard-{len(self.shards):05d}{self.suffix}"
        data = self._write(name, self.buf[:self.fill].tobytes())
        entry = {"file": name, "tokens": self.fill, "sha256": hashlib.sha256(data).hexdigest()}
        self.shards.append(entry)
        self.fill = 0
        if self.on_shard is not None:
            self.on_shard(entry)

    def close(self) -> None:
        """Write the last, shorter shard (if any tokens are left)."""
        if self.fill:
            self._flush()

    def take_tail(self, n: int) -> np.ndarray:
        """Remove the last ``n`` token ids of this split and return them (in order).

        They come from the unfinished buffer first, then from finished shards taken back off the
        disk (the last one partly kept goes back into the buffer). Counts of tokens drop by ``n``;
        bytes and documents are the caller's to adjust (only it knows what the ids spell).
        """
        if not 0 <= n <= self.tokens:
            raise ValueError(f"cannot take {n} tokens from a split of {self.tokens}")
        pieces = []
        left = n
        while left > 0:
            if self.fill == 0:
                entry = self.shards.pop()
                path = self.root / entry["file"]
                data = self._read(path)
                self.buf[:len(data)] = data
                self.fill = len(data)
                path.unlink()
            take = min(left, self.fill)
            pieces.append(self.buf[self.fill - take:self.fill].copy())
            self.fill -= take
            left -= take
        self.tokens -= n
        return np.concatenate(pieces[::-1]) if pieces else np.empty(0, dtype=self.buf.dtype)

    def summary(self) -> dict[str, Any]:
        """The manifest's entry for this split."""
        return {"tokens": self.tokens, "bytes": self.bytes, "documents": self.documents, "shards": list(self.shards)}

    # --- resume support: the unfinished buffer is saved at document boundaries -------------------
    def save_pending(self, tag: int) -> str:
        """Write the unfinished buffer to ``<split>/.pending-<tag>.bin``; return that relative name.

        A new name per checkpoint means a crash mid-checkpoint leaves the previous one intact.
        """
        name = f"{self.split}/.pending-{tag:012d}{self.suffix}"
        self._write(name, self.buf[:self.fill].tobytes())
        return name

    def restore(self, state: dict[str, Any]) -> None:
        """Take back counts, finished shards and the pending buffer saved by a checkpoint."""
        self.tokens, self.bytes, self.documents = state["tokens"], state["bytes"], state["documents"]
        self.shards = list(state["shards"])
        for entry in self.shards:
            path = self.root / entry["file"]
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                raise DataError(f"cannot resume: shard {path} is missing or changed; rerun without --resume")
        path = self.root / state["pending_file"]
        pending = self._read(path) if path.is_file() else None
        if pending is None or len(pending) != state["pending"]:
            raise DataError(f"cannot resume: {path} is missing or truncated; rerun without --resume")
        self.buf[:len(pending)] = pending
        self.fill = len(pending)


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a prepared data folder."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"no {MANIFEST_FILE} in {data_dir}: run `hwlm prepare --out {data_dir}` first "
                        "(or finish an interrupted one with --resume)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); rerun hwlm prepare") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise DataError(f"{path} has version {manifest.get('version') if isinstance(manifest, dict) else None!r}, "
                        f"this hwlm reads version {MANIFEST_VERSION}; rerun hwlm prepare")
    return manifest


class EncryptedShard:
    """One encrypted shard as a read-only token array: ``len``, ``shard[a:b]`` and ``np.asarray(shard)``.

    A slice decrypts only the chunks it overlaps (:class:`hwlm.crypt.EncryptedReader`, last two cached).
    """

    def __init__(self, path: Path, key: bytes, dtype: np.dtype, tokens: int) -> None:
        self.dtype = dtype
        try:
            self.reader = EncryptedReader(path, key)
        except WrongKeyError:  # the manifest's key id matched the key: this file's header does not
            raise DataError(f"shard {path} names another key than its manifest: it was swapped or damaged; "
                            "rerun hwlm prepare") from None
        if self.reader.size != tokens * dtype.itemsize:
            raise DataError(f"shard {path} holds {self.reader.size} bytes of tokens, expected "
                            f"{tokens * dtype.itemsize}; it is damaged: rerun hwlm prepare")
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.tokens)
        if step != 1:
            raise TypeError("an encrypted shard is read in contiguous slices")
        size = self.dtype.itemsize
        data = self.reader.read(start * size, max(0, stop - start) * size)
        return np.frombuffer(data, dtype=self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[0:self.tokens]
        return whole if dtype is None else whole.astype(dtype)


def data_key(data_dir: str | Path, manifest: dict[str, Any], key: bytes | None) -> bytes | None:
    """The key of an encrypted data folder (``key``, else $HWLM_DATA_KEY), checked; None when it is plain."""
    return key_for(f"data folder {data_dir}", manifest.get("encryption"), key)


def shard_arrays(data_dir: str | Path, manifest: dict[str, Any], split: str, verify: bool = True,
                 key: bytes | None = None) -> list[np.ndarray | EncryptedShard]:
    """Memory-map every shard of ``split`` (or open it for decryption, when the folder is encrypted),
    checking presence, size and (if ``verify``) sha256 of the file as stored."""
    if split not in manifest["splits"]:
        raise DataError(f"split {split!r} is not in {data_dir}; choose one of {', '.join(manifest['splits'])}")
    dtype = _np_dtype(manifest["dtype"])
    key = data_key(data_dir, manifest, key)  # a wrong or missing key stops here, before any shard is read
    arrays: list[np.ndarray | EncryptedShard] = []
    for entry in manifest["splits"][split]["shards"]:
        path = Path(data_dir) / entry["file"]
        if not path.is_file():
            raise DataError(f"shard {path} listed in the manifest is missing; rerun hwlm prepare")
        if key is None and path.stat().st_size != entry["tokens"] * dtype.itemsize:
            raise DataError(f"shard {path} has {path.stat().st_size} bytes, expected "
                            f"{entry['tokens'] * dtype.itemsize}; it is damaged: rerun hwlm prepare")
        if verify and sha256_file(path) != entry["sha256"]:
            if key is not None:
                check_chunks(path, key)  # names the chunk that fails, if one does
            raise DataError(f"shard {path} does not match its sha256 in the manifest; it is damaged: "
                            "rerun hwlm prepare")
        if key is None:
            arrays.append(np.memmap(path, dtype=dtype, mode="r"))
        else:
            arrays.append(EncryptedShard(path, key, dtype, entry["tokens"]))
    return arrays
