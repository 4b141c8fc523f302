"""Evaluate a trained run: loss, perplexity and bits per byte on a prepared split or on raw text.

    >>> from hwlm.evaluate import EvalConfig, evaluate
    >>> evaluate(EvalConfig(run="runs/train"))  # doctest: +SKIP
    EvalResult(loss=3.12, perplexity=22.6, bits_per_byte=1.41, tokens=..., bytes=...)

Bits per byte compare models with different tokenizers: total nats / ln 2 / UTF-8 bytes.

- Raw text files are normalized exactly as the run's data was (same Unicode form, same
  control-character stripping), tokenized with the run's tokenizer, and every token after
  the first is predicted once (windows of ``block_size`` that share one boundary token),
  so nats and bytes are both exact.
- A prepared split is read in the data stage's non-overlapping windows, whose first token
  has no prediction. The mean loss per predicted token is therefore scaled to the whole
  split, ``nats = loss * split_tokens``, over the manifest's byte count for that split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from hwlm.config import option
from hwlm.errors import ConfigError, DataError

__all__ = ["EvalConfig", "EvalResult", "evaluate"]


@dataclass
class EvalConfig:
    """What to evaluate, and on which text."""

    run: Path | None = option(None, "run folder (newest checkpoint) or a checkpoint folder")
    data: Path | None = option(None, "prepared data folder; default: the one the run trained on")
    split: Literal["train", "val", "test"] = option("val", "split of the prepared data to evaluate on (a classifier: "
                                                           "test unless given)")
    files: list[str] = option(factory=list, help="raw text/JSONL files to evaluate on instead of a prepared split")
    batch_size: int = option(16, "windows per batch")
    max_batches: int | None = option(None, "stop after this many batches (default: all of the text)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N, mps or xla")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "auto: bf16 autocast on CUDA, fp32 elsewhere")
    key_file: Path | None = option(None, "key file (mode 0600) of an encrypted run or data folder; unset: "
                                   "$HWLM_DATA_KEY")

    def __post_init__(self) -> None:
        self.run = Path(self.run) if self.run is not None else None
        self.data = Path(self.data) if self.data is not None else None
        self.key_file = Path(self.key_file) if self.key_file is not None else None
        self.files = [str(f) for f in self.files]
        if self.batch_size <= 0:
            raise ConfigError(f"eval batch_size is {self.batch_size}; it must be more than zero")
        if self.max_batches is not None and self.max_batches <= 0:
            raise ConfigError(f"eval max_batches is {self.max_batches}; it must be more than zero (or unset)")
        if self.data is not None and self.files:
            raise ConfigError("give either --data (a prepared split) or text FILES, not both")


@dataclass
class EvalResult:
    """Mean loss (nats/token), its perplexity, bits per UTF-8 byte, and how much text was seen."""

    loss: float
    perplexity: float
    bits_per_byte: float
    tokens: int      # predicted tokens evaluated
    bytes: int       # UTF-8 bytes of the text the bits are spread over
    source: str = ""
    step: int = 0


def _raw_windows(ids: list[int], block_size: int, batch_size: int, max_batches: int | None) -> Iterator[Any]:
    """(x, y) batches over ``ids``: windows of block_size + 1 tokens sharing their boundary token;
    the last window is padded with targets of -1 (ignored)."""
    import torch

    stream = torch.tensor(ids, dtype=torch.long)
    n_windows = max(1, math.ceil((len(ids) - 1) / block_size))
    batch: list[tuple[Any, Any]] = []
    sent = 0
    for w in range(n_windows):
        chunk = stream[w * block_size: w * block_size + block_size + 1]
        x = torch.zeros(block_size, dtype=torch.long)
        y = torch.full((block_size,), -1, dtype=torch.long)
        x[: len(chunk) - 1] = chunk[:-1]
        y[: len(chunk) - 1] = chunk[1:]
        batch.append((x, y))
        if len(batch) == batch_size or w == n_windows - 1:
            yield torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
            batch, sent = [], sent + 1
            if max_batches is not None and sent >= max_batches:
                return


def _raw_text(cfg: EvalConfig, loaded: Any) -> tuple[Iterator[Any], int | None, str]:
    """Batches from raw files tokenized as the run's data was; returns (batches, bytes, label)."""
    from hwlm.data.readers import read_documents
    from hwlm.data.tokenizer import encode_documents

    prep = (loaded.run_config or {}).get("data", {}).get("prepare", {})
    # Cut the files into documents as the run's data was cut (runs prepared before paragraph
    # splitting existed record no "paragraphs" key: one document per file, as then).
    docs = list(read_documents(cfg.files, text_field=prep.get("text_field", "text"),
                               form=prep.get("normalize", "nfkc"), strip_control=prep.get("strip_control", True),
                               max_doc_chars=prep.get("max_doc_chars", 1_000_000),
                               paragraphs=prep.get("paragraphs", False)))
    eot = loaded.tokenizer.id_to_token(loaded.eot_id) if loaded.eot_id is not None else None
    ids = [t for doc in encode_documents(loaded.tokenizer, docs, eot) for t in doc]
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    if len(ids) < 2 or n_bytes == 0:
        raise DataError(f"no text to evaluate in {', '.join(cfg.files)}: give non-empty UTF-8 text files")
    batches = _raw_windows(ids, loaded.model_cfg.block_size, cfg.batch_size, cfg.max_batches)
    return batches, n_bytes, f"{len(cfg.files)} file(s)"


def _prepared_split(cfg: EvalConfig, loaded: Any, key: bytes | None = None) -> tuple[Iterator[Any], float, int, str]:
    """Batches from a prepared split; returns (batches, split tokens per byte scale, bytes, label)."""
    from hwlm.data import eval_batches, load_manifest

    data = cfg.data or Path((loaded.run_config or {}).get("data", {}).get("dir", ""))
    if not str(data):
        raise ConfigError("the run does not name its data folder: pass --data DIR or text FILES")
    manifest = load_manifest(data)
    want = (loaded.run_config or {}).get("data", {}).get("tokenizer_sha256")
    if want and manifest.get("tokenizer_sha256") != want:
        raise DataError(f"{data} was tokenized with another tokenizer than run {cfg.run}: "
                        "evaluate on that run's data, or pass raw text FILES")
    split = manifest.get("splits", {}).get(cfg.split, {})
    if split.get("tokens", 0) < 2 or split.get("bytes", 0) <= 0:
        raise DataError(f"the {cfg.split} split of {data} is empty: prepare more text with `hwlm prepare`")
    batches = eval_batches(data, cfg.split, cfg.batch_size, loaded.model_cfg.block_size, max_batches=cfg.max_batches,
                           key=key)
    return batches, float(split["tokens"]), int(split["bytes"]), f"{data} ({cfg.split})"


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Load ``cfg.run`` and measure it on a prepared split or on raw files."""
    from hwlm.crypt import optional_key
    from hwlm.device import select_device
    from hwlm.train.load import load_model
    from hwlm.train.runtime import loss_sums

    if cfg.run is None:
        raise ConfigError("no run given: pass --run DIR (a run or checkpoint folder)")
    device = select_device(cfg.device).device
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    key = optional_key(cfg.key_file)
    loaded = load_model(cfg.run, device, key)
    if cfg.files:
        batches, n_bytes, label = _raw_text(cfg, loaded)
        nats, n = loss_sums(loaded.model, batches, device, precision)
        total_nats = nats
    else:
        batches, split_tokens, n_bytes, label = _prepared_split(cfg, loaded, key)
        nats, n = loss_sums(loaded.model, batches, device, precision)
        total_nats = nats / max(n, 1) * split_tokens
    if n == 0:
        raise DataError(f"{label} holds fewer tokens than one window of {loaded.model_cfg.block_size}: "
                        "give more text")
    loss = nats / n
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)),
                      bits_per_byte=total_nats / math.log(2) / n_bytes, tokens=n, bytes=n_bytes,
                      source=label, step=loaded.step)
