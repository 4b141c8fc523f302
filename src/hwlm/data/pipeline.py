"""``prepare(cfg)``: raw text -> tokenizer.json + token shards + manifest.json, streaming and resumable.

Flow (memory stays flat whatever the corpus size):

1. Resolve the inputs; train the tokenizer on an even, bounded sample of documents
   (``tokenizer_train_chars``), or reuse ``cfg.tokenizer``.
2. Stream raw documents in batches of about ``batch_chars`` characters to ``workers`` processes
   (spawned, each loading tokenizer.json itself), which normalize, drop empty documents and encode.
   Results come back in order, so the output does not depend on ``workers``.
3. Each kept document ``i`` goes to val when a hash of ``(seed, i)`` falls below ``val_fraction``;
   document 0 always goes to train and document 1 always to val, so two documents make both splits.
   With a single document (a text with no blank lines), val is instead the last ``val_fraction``
   of the train token stream, cut by position (nanoGPT's split), and a note says so.
4. Shards are written atomically as they fill. After each batch that finished a shard, a
   checkpoint (``progress.json`` + the unfinished buffers) lets ``--resume`` continue from there.
5. ``manifest.json`` is written last, atomically; progress files are then removed.

With ``encrypt`` every shard and pending buffer is written encrypted (``.bin.enc``, see
:mod:`hwlm.data.shards`) and the manifest records ``encryption: {scheme, key_id}``; the key (from
``key_file`` or ``$HWLM_DATA_KEY``) is read once here and never written. A resume needs the same key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from hwlm.config import to_dict
from hwlm.crypt import encryption_section, key_for, load_key
from hwlm.data.config import PrepareConfig
from hwlm.data.normalize import normalize
from hwlm.data.readers import Source, Utf8Stats, iter_raw_documents, resolve_inputs
from hwlm.data.shards import MANIFEST_FILE, MANIFEST_VERSION, SPLITS, ShardWriter, dtype_for_vocab
from hwlm.data.tokenizer import TOKENIZER_FILE, load_tokenizer, save_tokenizer, token_id, tokenizer_sha256
from hwlm.data.tokenizer import train_tokenizer
from hwlm.errors import ConfigError, DataError
from hwlm.io import atomic_write_json, folder_lock, resource_error

__all__ = ["prepare", "PrepareResult", "PROGRESS_FILE"]

PROGRESS_FILE = "progress.json"


@dataclass
class PrepareResult:
    """What ``prepare`` made: the folder, its manifest and how fast it went."""

    out: Path
    manifest: dict[str, Any]
    seconds: float
    bytes_this_run: int
    resumed: bool = False
    skipped_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line each, for the person watching

    @property
    def mb_per_s(self) -> float:
        """Normalized UTF-8 megabytes (1e6) encoded per second in this run."""
        return self.bytes_this_run / 1e6 / max(self.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        splits = self.manifest["splits"]
        return {"out": str(self.out), "dtype": self.manifest["dtype"], "vocab_size": self.manifest["vocab_size"],
                "documents": {s: splits[s]["documents"] for s in splits},
                "tokens": {s: splits[s]["tokens"] for s in splits},
                "bytes": {s: splits[s]["bytes"] for s in splits},
                "shards": {s: len(splits[s]["shards"]) for s in splits},
                "invalid_utf8": self.manifest["invalid_utf8"], "seconds": round(self.seconds, 3),
                "mb_per_s": round(self.mb_per_s, 3), "resumed": self.resumed, "skipped_files": self.skipped_files,
                "notes": self.notes}


def _unit(seed: int, tag: str, index: int) -> float:
    """A deterministic number in [0, 1) from (seed, tag, index), the same on every machine."""
    digest = hashlib.blake2b(f"{seed}:{tag}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def split_of(index: int, seed: int, val_fraction: float) -> str:
    """Which split kept document ``index`` belongs to (0 -> train, 1 -> val, else by hash)."""
    if index < 2:
        return SPLITS[index]
    return "val" if _unit(seed, "split", index) < val_fraction else "train"


# --- tokenizer -------------------------------------------------------------------------------------
class _TrainingSample:
    """Iterable of normalized documents: each kept with probability p so the sample spreads evenly
    over the corpus and holds at most ``budget`` characters."""

    def __init__(self, cfg: PrepareConfig, sources: list[Source]) -> None:
        self.cfg, self.sources, self.count = cfg, sources, 0
        total = sum(_source_size(s) for s in sources)
        self.p = min(1.0, cfg.tokenizer_train_chars / max(total, 1))

    def __iter__(self) -> Iterator[str]:
        yield from self._draw(self.p)
        if self.count == 0 and self.p < 1.0:  # an unlucky draw on few, large documents
            yield from self._draw(1.0)

    def _draw(self, p: float) -> Iterator[str]:
        cfg, budget = self.cfg, self.cfg.tokenizer_train_chars
        raw = iter_raw_documents(self.sources, cfg.text_field, cfg.max_doc_chars, Utf8Stats(), cfg.paragraphs)
        for i, text in enumerate(raw):
            if budget <= 0:
                break
            if p < 1.0 and _unit(cfg.seed, "tok", i) >= p:
                continue
            doc = normalize(text[:budget], cfg.normalize, cfg.strip_control)
            if doc.strip():
                budget -= len(doc)
                self.count += 1
                yield doc


def _source_size(src: Source) -> int:
    if src.kind == "builtin":
        from pydoc_data.topics import topics
        return sum(len(v) for v in topics.values())
    return os.path.getsize(src.path)


def _make_tokenizer(cfg: PrepareConfig, sources: list[Source], out: Path) -> str:
    """Train (or copy) tokenizer.json into ``out``; return its sha256."""
    if cfg.tokenizer is not None:
        tok = load_tokenizer(cfg.tokenizer)
        token_id(tok, cfg.eot_token)
    else:
        sample = _TrainingSample(cfg, sources)
        tok = train_tokenizer(sample, cfg.vocab_size, cfg.special_tokens)
        if sample.count == 0:
            raise _empty_corpus(cfg)
    return save_tokenizer(tok, out / TOKENIZER_FILE)


def _empty_corpus(cfg: PrepareConfig) -> DataError:
    what = ", ".join(cfg.inputs) if cfg.inputs else "the built-in corpus"
    return DataError(f"no text in {what} after cleaning (files empty or only whitespace/control characters): "
                     "give inputs that contain text")


# --- encoding workers ------------------------------------------------------------------------------
class _Encoder:
    """Normalize + encode one batch of raw documents; lives in each worker process."""

    def __init__(self, tokenizer_file: str, form: str, strip_control: bool, eot_token: str, dtype: str) -> None:
        self.tok = load_tokenizer(tokenizer_file)
        self.tok.encode_special_tokens = True  # a literal "<|endoftext|>" in text is just text
        self.eot = token_id(self.tok, eot_token)
        self.form, self.strip, self.dtype = form, strip_control, np.dtype(dtype).newbyteorder("<")

    def __call__(self, raw: list[str]) -> tuple[np.ndarray, list[int], list[int]]:
        docs = [d for d in (normalize(t, self.form, self.strip) for t in raw) if d.strip()]
        encs = self.tok.encode_batch(docs, add_special_tokens=False)
        lengths = [len(e.ids) + 1 for e in encs]
        flat = np.fromiter(itertools.chain.from_iterable(e.ids + [self.eot] for e in encs),
                           dtype=self.dtype, count=sum(lengths))
        return flat, lengths, [len(d.encode("utf-8")) for d in docs]


_WORKER: _Encoder | None = None


def _init_worker(*args: Any) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: `workers` is the parallelism
    _WORKER = _Encoder(*args)


def _work(raw: list[str]) -> tuple[np.ndarray, list[int], list[int]]:
    assert _WORKER is not None
    return _WORKER(raw)


def _batches(docs: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _ordered_map(batches: Iterator[list[str]], workers: int, init: tuple) -> Iterator[tuple[int, Any]]:
    """(raw documents in batch, encoded batch), in input order; at most 2 batches in flight per worker."""
    if workers == 1:
        enc = _Encoder(*init)
        for b in batches:
            yield len(b), enc(b)
        return
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init) as pool:
        inflight: deque = deque()
        for b in batches:
            inflight.append((len(b), pool.apply_async(_work, (b,))))
            if len(inflight) >= 2 * workers:
                n, res = inflight.popleft()
                yield n, res.get()
        while inflight:
            n, res = inflight.popleft()
            yield n, res.get()


# --- output folder, checkpoints --------------------------------------------------------------------
def _open_out(out: Path) -> None:
    """Make ``out`` and prove it is writable before any slow work starts."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file: choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise resource_error(exc, out) from None


def _clean(out: Path) -> None:
    """Remove what an earlier preparation left in ``out`` (only files hwlm names), manifest first."""
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    for split in SPLITS:
        for pattern in ("shard-*.bin", ".pending-*.bin", "shard-*.bin.enc", ".pending-*.bin.enc"):
            for f in (out / split).glob(pattern):
                f.unlink(missing_ok=True)


def _drop_pending(out: Path, keep: set[str]) -> None:
    for split in SPLITS:
        for f in [*(out / split).glob(".pending-*.bin"), *(out / split).glob(".pending-*.bin.enc")]:
            if f"{split}/{f.name}" not in keep:
                f.unlink(missing_ok=True)


def _fingerprint(cfg: PrepareConfig, sources: list[Source]) -> dict[str, Any]:
    """Everything that decides the output bytes; a resume must match it exactly."""
    conf = {k: v for k, v in to_dict(cfg).items() if k not in ("resume", "workers", "batch_chars", "key_file")}
    tok = tokenizer_sha256(cfg.tokenizer) if cfg.tokenizer is not None and cfg.tokenizer.is_file() else None
    return {"config": conf, "tokenizer_input_sha256": tok, "sources": [s.fingerprint() for s in sources]}


def _load_progress(out: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    path = out / PROGRESS_FILE
    if not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"cannot resume: {path} is damaged; rerun without --resume") from None
    if progress.get("fingerprint") != fingerprint:
        raise ConfigError(f"cannot resume: {out} was being prepared from other inputs or settings; "
                          "rerun with the same ones, or without --resume to start over")
    if (out / TOKENIZER_FILE).is_file() and tokenizer_sha256(out / TOKENIZER_FILE) == progress["tokenizer_sha256"]:
        return progress
    raise DataError(f"cannot resume: {out / TOKENIZER_FILE} is missing or changed; rerun without --resume")


class _Checkpointer:
    """Writes progress.json + the writers' pending buffers, so ``--resume`` can pick up at a batch edge."""

    def __init__(self, out: Path, fingerprint: dict[str, Any], tok_sha: str,
                 writers: dict[str, ShardWriter]) -> None:
        self.out, self.fingerprint, self.tok_sha, self.writers = out, fingerprint, tok_sha, writers

    def save(self, raw_done: int, kept: int) -> None:
        splits = {}
        for name, w in self.writers.items():
            splits[name] = {**w.summary(), "pending": w.fill, "pending_file": w.save_pending(raw_done)}
        key = self.writers["train"].key
        atomic_write_json(self.out / PROGRESS_FILE, {
            "version": 1, "fingerprint": self.fingerprint, "tokenizer_sha256": self.tok_sha,
            "raw_done": raw_done, "kept": kept, "splits": splits,
            **({"encryption": encryption_section(key)} if key is not None else {})})
        _drop_pending(self.out, {s["pending_file"] for s in splits.values()})


# --- the stage -------------------------------------------------------------------------------------
def prepare(cfg: PrepareConfig, *, _after_checkpoint: Callable[[int], None] | None = None) -> PrepareResult:
    """Tokenize ``cfg.inputs`` into shards in ``cfg.out``; see the module docstring for the flow.

    ``_after_checkpoint(shards_done)`` is a test hook: raising from it simulates an interruption.
    """
    t0 = time.perf_counter()
    out = Path(cfg.out)
    key = load_key(cfg.key_file) if cfg.encrypt else None  # before any work: a bad key file is one line
    stats = Utf8Stats()
    sources = resolve_inputs(cfg.inputs, stats)
    _open_out(out)
    with folder_lock(out, what="hwlm prepare"):
        return _prepare_locked(cfg, out, sources, stats, t0, _after_checkpoint, key)


def _prepare_locked(cfg: PrepareConfig, out: Path, sources: list[Source], stats: Utf8Stats, t0: float,
                    _after_checkpoint: Callable[[int], None] | None, key: bytes | None) -> PrepareResult:
    """The body of :func:`prepare`, run while this process holds ``out``'s lock."""
    fingerprint = _fingerprint(cfg, sources)
    progress = _load_progress(out, fingerprint) if cfg.resume else None
    if progress is None:
        _clean(out)
        tok_sha = _make_tokenizer(cfg, sources, out)
    else:
        tok_sha = progress["tokenizer_sha256"]
        key_for(f"the interrupted preparation in {out}", progress.get("encryption"), key)
    tok = load_tokenizer(out / TOKENIZER_FILE)
    eot_id, vocab = token_id(tok, cfg.eot_token), tok.get_vocab_size()
    dtype = dtype_for_vocab(vocab)
    writers = {s: ShardWriter(out, s, dtype, cfg.tokens_per_shard, key=key) for s in SPLITS}
    ckpt = _Checkpointer(out, fingerprint, tok_sha, writers)
    raw_done = kept = restored_bytes = 0
    if progress is not None:
        for s in SPLITS:
            writers[s].restore(progress["splits"][s])
        raw_done, kept = progress["raw_done"], progress["kept"]
        restored_bytes = sum(w.bytes for w in writers.values())
    _encode(cfg, sources, stats, writers, ckpt, (raw_done, kept), _after_checkpoint)
    if sum(w.documents for w in writers.values()) == 0:
        raise _empty_corpus(cfg)
    notes = [note] if (note := _val_from_tail(writers, tok, cfg.val_fraction)) else []
    for w in writers.values():
        w.close()
    manifest = {"version": MANIFEST_VERSION, "dtype": dtype, "vocab_size": vocab, "eot_id": eot_id,
                "tokenizer_sha256": tok_sha, "splits": {s: w.summary() for s, w in writers.items()},
                "val_source": "train_tail" if notes else "documents",
                "invalid_utf8": stats.to_dict(), "config": to_dict(cfg)}
    if key is not None:
        manifest["encryption"] = encryption_section(key)
    atomic_write_json(out / MANIFEST_FILE, manifest)
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    _drop_pending(out, set())
    total = sum(w.bytes for w in writers.values())
    return PrepareResult(out, manifest, time.perf_counter() - t0, total - restored_bytes,
                         resumed=progress is not None, skipped_files=list(stats.skipped_files), notes=notes)


def _token_bytes(tok: Any, ids: np.ndarray) -> int:
    """UTF-8 bytes that ``ids`` spell: in a byte-level BPE each character of a token's string stands
    for one byte; special tokens (end-of-text) spell none, as in the per-document byte counts."""
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for token, i in tok.get_vocab().items():
        lengths[i] = len(token)
    for i in tok.get_added_tokens_decoder():
        lengths[i] = 0
    return int(lengths[ids.astype(np.int64)].sum())


def _val_from_tail(writers: dict[str, ShardWriter], tok: Any, val_fraction: float) -> str | None:
    """When no document went to val (one long text, a few paragraphs), make val the last
    ``val_fraction`` of the train token stream, cut by position as nanoGPT does; returns the note."""
    train, val = writers["train"], writers["val"]
    if val.tokens or train.tokens < 2:
        return None
    n = max(1, math.ceil(train.tokens * val_fraction))
    ids = train.take_tail(n)
    nbytes = min(_token_bytes(tok, ids), train.bytes)
    train.bytes -= nbytes
    val.add(ids, nbytes)
    return (f"no document fell into the val split ({train.documents} document(s) in all), so val is the last "
            f"{n:,} tokens ({val_fraction:g} of the stream) cut from the end of train")


def _encode(cfg: PrepareConfig, sources: list[Source], stats: Utf8Stats, writers: dict[str, ShardWriter],
            ckpt: _Checkpointer, start: tuple[int, int], hook: Callable[[int], None] | None) -> None:
    """Stream, encode and route every document after the first ``start[0]`` raw ones."""
    raw_done, kept = start
    raw = iter_raw_documents(sources, cfg.text_field, cfg.max_doc_chars, stats, cfg.paragraphs)
    raw = itertools.islice(raw, raw_done, None)  # on resume, re-read (not re-encode) what is done
    init = (str(ckpt.out / TOKENIZER_FILE), cfg.normalize, cfg.strip_control, cfg.eot_token,
            writers["train"].dtype)
    shards_seen = 0
    for nraw, (flat, lengths, nbytes) in _ordered_map(_batches(raw, cfg.batch_chars), cfg.workers, init):
        pos = 0
        for length, nb in zip(lengths, nbytes):
            writers[split_of(kept, cfg.seed, cfg.val_fraction)].add(flat[pos:pos + length], nb)
            pos += length
            kept += 1
        raw_done += nraw
        shards_now = sum(len(w.shards) for w in writers.values())
        if shards_now > shards_seen:
            shards_seen = shards_now
            ckpt.save(raw_done, kept)
            if hook is not None:
                hook(shards_now)
