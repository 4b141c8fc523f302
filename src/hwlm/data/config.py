"""``PrepareConfig``: every setting of ``hwlm prepare``, torch-free so the CLI can build its parser fast.

Values are checked once, in ``__post_init__``; a bad value raises :class:`~hwlm.errors.ConfigError`
naming the field, the value and the valid range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hwlm.config import option
from hwlm.errors import ConfigError

__all__ = ["PrepareConfig", "BUILTIN_CORPUS", "DEFAULT_EOT"]

BUILTIN_CORPUS = "builtin:pydoc"
DEFAULT_EOT = "<|endoftext|>"
# Byte-level BPE starts from the 256 byte symbols; the vocabulary must hold them plus the specials.
BYTE_ALPHABET = 256


@dataclass
class PrepareConfig:
    """How to turn raw text into tokenizer + token shards (see docs/architecture.md, 'data')."""

    inputs: list[str] = option(factory=list, help="text/JSONL files, folders or globs; none = the built-in corpus "
                               "(Python's pydoc topics, nothing downloaded)")
    task: Literal["lm", "classify"] = option("lm", "lm: token shards for a language model; classify: labelled "
                                             "CSV/JSONL rows -> deduplicated, stratified train/val/test splits")
    label_field: str = option("label", "with --task classify: the CSV column / JSON field that holds the label")
    test_fraction: float = option(0.1, "with --task classify: fraction of each class held out for the test split")
    out: Path = option(Path("runs/data"), "output folder for manifest.json, tokenizer.json and shards")
    text_field: str = option("text", "JSON Lines field that holds the document text")
    normalize: Literal["nfkc", "nfc", "none"] = option("nfkc", "Unicode normalization applied before tokenizing")
    strip_control: bool = option(True, "remove control characters except newline and tab")
    paragraphs: bool = option(True, "cut plain-text files at blank lines, one document per paragraph (off: a "
                              "file is one document, still cut past max_doc_chars)")
    max_doc_chars: int = option(1_000_000, "a plain-text document longer than this is split at blank lines (else "
                                "newlines) into documents of about this many characters (bounds memory)")
    tokenizer: Path | None = option(None, "reuse this tokenizer.json instead of training a new one")
    vocab_size: int = option(4096, "vocabulary size of the trained byte-level BPE tokenizer")
    special_tokens: list[str] = option(factory=lambda: [DEFAULT_EOT],
                                       help="special tokens (comma-separated); the first one ends every document")
    tokenizer_train_chars: int = option(20_000_000, "at most this many characters, sampled evenly across the "
                                        "corpus, train the tokenizer (bounds memory)")
    val_fraction: float = option(0.1, "fraction of documents held out for validation (split by document hash)")
    seed: int = option(0, "seed of the train/validation split and of the tokenizer training sample")
    tokens_per_shard: int = option(1 << 24, "tokens per shard file (the last shard of a split may be shorter)")
    workers: int = option(1, "encoding processes; 1 encodes in this process with tokenizers' own threads")
    batch_chars: int = option(1 << 20, "characters per encoding batch handed to a worker")
    resume: bool = option(False, "continue an interrupted preparation in --out instead of starting over")
    encrypt: bool = option(False, "write the token shards (--task classify: the split files) encrypted (AES-256-GCM, "
                           "*.enc) under the key of --key-file or $HWLM_DATA_KEY")
    key_file: Path | None = option(None, "with --encrypt: the key file (64 hex digits, mode 0600; `hwlm crypt "
                                   "keygen`); unset: $HWLM_DATA_KEY. Its path is recorded, never the key")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.tokenizer is not None:
            self.tokenizer = Path(self.tokenizer)
        if self.key_file is not None:
            self.key_file = Path(self.key_file)
            if not self.encrypt:
                raise ConfigError(f"key_file {self.key_file} is given without encrypt: add --encrypt to write "
                                  "encrypted shards, or drop --key-file")
        self.inputs = [str(i) for i in self.inputs]
        self.special_tokens = [str(s) for s in self.special_tokens]
        if not self.special_tokens or any(s == "" for s in self.special_tokens):
            raise ConfigError(f"special_tokens is {self.special_tokens!r}: give at least one non-empty token, "
                              f"e.g. {DEFAULT_EOT}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ConfigError(f"special_tokens {self.special_tokens!r} has duplicates: list each token once")
        floor = BYTE_ALPHABET + len(self.special_tokens)
        if not floor <= self.vocab_size <= 1 << 32:
            raise ConfigError(f"vocab_size is {self.vocab_size}; it must be between {floor} "
                              f"(256 bytes + {len(self.special_tokens)} special tokens) and 2**32")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction is {self.val_fraction}; it must be strictly between 0 and 1, e.g. 0.05")
        for name in ("workers", "tokens_per_shard", "max_doc_chars", "tokenizer_train_chars", "batch_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be at least 1")
        if self.task == "classify" and not (0.0 < self.test_fraction < 1.0 and self.val_fraction + self.test_fraction < 1.0):
            raise ConfigError(f"test_fraction is {self.test_fraction} with val_fraction {self.val_fraction}; each must be "
                              "in (0, 1) and together below 1, e.g. 0.1 and 0.1")
        if not self.label_field:
            raise ConfigError("label_field is empty: name the CSV column / JSON field that holds the label, e.g. label")
        if not self.text_field:
            raise ConfigError("text_field is empty: name the JSON Lines field that holds the text, e.g. text")

    @property
    def eot_token(self) -> str:
        """The end-of-text token: the first special token."""
        return self.special_tokens[0]
