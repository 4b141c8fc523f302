"""Byte-level BPE tokenizer: train with Hugging Face ``tokenizers``, save, load, encode.

The tokenizer is GPT-2 style: a ByteLevel pre-tokenizer (``add_prefix_space=False``), a BPE model
over the 256 byte symbols, a ByteLevel decoder and *no normalizer* (normalization is ours, see
:mod:`hwlm.data.normalize`). So ``decode(encode(x)) == x`` for every string, and the saved
``tokenizer.json`` loads as ``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hwlm.data.config import DEFAULT_EOT
from hwlm.errors import ConfigError, DataError
from hwlm.io import atomic_write_text

__all__ = ["train_tokenizer", "save_tokenizer", "load_tokenizer", "token_id", "encode_documents",
           "tokenizer_sha256", "TOKENIZER_FILE"]

TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """Train a byte-level BPE of at most ``vocab_size`` tokens; specials get ids 0, 1, ...

    A tiny corpus can end with fewer merges than asked: the vocabulary is then smaller.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> str:
    """Atomically write ``tok`` as tokenizer.json; return the file's sha256."""
    text = tok.to_str(pretty=True)
    atomic_write_text(path, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_sha256(path: str | Path) -> str:
    """sha256 of a tokenizer file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load tokenizer.json from a file, or from a prepared-data / run folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"tokenizer file {path} does not exist: give a tokenizer.json path or a prepared data folder")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception on malformed JSON
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"tokenizer file {path} is not a valid tokenizer.json ({first}); "
                        "give a file saved by Hugging Face tokenizers") from None


def token_id(tok: Tokenizer, token: str) -> int:
    """Id of ``token`` (e.g. the end-of-text token), or ConfigError if the vocabulary lacks it."""
    tid = tok.token_to_id(token)
    if tid is None:
        raise ConfigError(f"the tokenizer has no {token!r} token: set special_tokens so that its first entry "
                          "is a token the tokenizer knows")
    return tid


def encode_documents(tok: Tokenizer, docs: Iterable[str], eot_token: str | None = DEFAULT_EOT,
                     batch_size: int = 256) -> Iterator[list[int]]:
    """Token ids of each document, each followed by the end-of-text id (None: nothing appended).

    Special-token text inside a document (say a literal ``<|endoftext|>``) is encoded as plain
    text, so documents cannot fake a boundary.
    """
    eot = [token_id(tok, eot_token)] if eot_token is not None else []
    tok.encode_special_tokens = True
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= batch_size:
            yield from (enc.ids + eot for enc in tok.encode_batch(batch, add_special_tokens=False))
            batch = []
    if batch:
        yield from (enc.ids + eot for enc in tok.encode_batch(batch, add_special_tokens=False))
