"""Classifiers: a Transformer with a pooled head, the source's LSTM, a fastText-style bag of words, a digits MLP,
and a wide & deep model (the Transformer and the bag of words, their logits summed).

Their parameter, FLOP and activation counts live in :mod:`hwlm.formulas` (``classifier_param_count`` ...,
tested against these modules) for training's MFU and the planner.

Every model maps a batch to class logits ``(B, K)``:

* text models take ``ids`` (B, T) int64, padded on the *right* with ``pad_id``, and ``mask`` (B, T) bool
  (True on real tokens);
* :class:`DigitsMLP` takes ``x`` (B, F) float features and no mask.

A model is rebuilt from its *spec*, a plain dict saved in the run's ``config.json`` (``classifier``):
``{"kind", "n_classes", "vocab_size", "pad_id", ...}`` (:func:`build_classifier`). The Transformer's spec
also holds its trunk's :class:`~hwlm.model.ModelConfig` as a dict (``trunk``), so a language-model
run's weights load into it unchanged (``--init-from``).

Pooling for the Transformer: ``last`` takes the hidden state of the rightmost real token (causal
attention means it has read the whole text; with right padding no real position ever attends to
padding); it is what Hugging Face's ``GPT2ForSequenceClassification`` computes, so such a model
exports (:mod:`hwlm.export.hf_classify`). ``mean`` averages the hidden states of the real tokens.

Wide & deep (Cheng et al. 2016, arXiv:1606.07792): :class:`WideDeepClassifier` adds the logits of the
Transformer classifier (deep) and of the bag of words over hashed n-grams (wide), trained jointly. One row
holds both inputs: the text's token ids first, then its bag-of-words features shifted past the trunk's
vocabulary (:func:`wide_deep_row`), so the batching, checkpoints and ``hwlm eval``/``predict`` are the
other text models'.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwlm.errors import ConfigError
from hwlm.model.config import ModelConfig
from hwlm.model.transformer import Transformer

__all__ = ["TransformerClassifier", "LSTMClassifier", "BagOfWords", "DigitsMLP", "WideDeepClassifier",
           "build_classifier", "KINDS", "last_token_index", "bow_features", "bow_rows", "BOW_FEATURES", "wide_deep_row"]

KINDS = ("transformer", "lstm", "bow", "mlp", "wide-deep")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost True in each row of ``mask`` (B, T) -> (B,); row of no True -> 0.

    The same formula as Hugging Face's sequence classifiers (argmax of position * mask), so the
    pooled positions agree exactly."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * mask.long()).argmax(-1)


class TransformerClassifier(nn.Module):
    """hwlm's Transformer trunk, its final norm, a pooling and a bias-free ``score`` Linear (HF's name)."""

    def __init__(self, trunk_cfg: ModelConfig, n_classes: int, pooling: str = "last") -> None:
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ConfigError(f"pooling is {pooling!r}; choose last or mean")
        self.pooling = pooling
        self.trunk = Transformer(trunk_cfg)
        # The LM head takes no part in classification: freeze it so the optimizer holds no state for it
        # (with tied embeddings it is the embedding table, which must stay trainable).
        if not trunk_cfg.tie_embeddings:
            self.trunk.lm_head.weight.requires_grad_(False)
        self.score = nn.Linear(trunk_cfg.n_embd, n_classes, bias=False)
        nn.init.normal_(self.score.weight, 0.0, 0.02)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (B, T, C): the trunk's forward without its LM head."""
        t = self.trunk
        T = ids.shape[1]
        if T > t.cfg.block_size:
            raise ValueError(f"{T} tokens exceed block_size {t.cfg.block_size}")
        x = t.wte(ids)  # (B, T, C)
        rope = None
        if t.wpe is not None:
            x = x + t.wpe.weight[:T]
        else:
            rope = (t.rope_cos[:T], t.rope_sin[:T])
        if t.cfg.dropout and self.training:
            x = F.dropout(x, t.cfg.dropout, training=True)
        for block in t.h:
            x = block(x, rope, None, 0)
        return t.ln_f(x)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.hidden(ids)  # (B, T, C)
        if self.pooling == "last":
            pooled = h[torch.arange(h.shape[0], device=h.device), last_token_index(mask)]  # (B, C)
        else:
            m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.score(pooled)  # (B, K)


class LSTMClassifier(nn.Module):
    """Embedding -> LSTM -> dense on the last real step's hidden state (the source's sentence classifier).

    The LSTM runs over the right-padded batch and the state at each row's last real token is taken: the
    LSTM is unidirectional, so that state has read that row's tokens and no padding. The same as packing
    the rows (``pack_padded_sequence``), and much faster on a CPU: there the padded batch is one oneDNN RNN
    call per layer, while packed rows of many lengths take ATen's step-by-step path, whose backward measured
    5-7x slower in total on the benchmark's reviews (docs/benchmarks.md)."""

    def __init__(self, vocab_size: int, n_classes: int, pad_id: int, embed: int = 64, hidden: int = 128,
                 layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))  # (B, T, H): the last layer's state after each position
        last = (mask.sum(1) - 1).clamp_min(0)  # (B,) the last real token (an empty row: its first position)
        return self.head(self.drop(out[torch.arange(ids.shape[0], device=ids.device), last]))


# Words for the bag of words: a CJK ideograph, kana or hangul syllable alone (those scripts write no spaces; a
# character n-gram is their word n-gram, as TF-IDF's char analyzer uses), else a run of letters/digits, else one
# punctuation mark; lower-cased.
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W_]+|[^\w\s]")
BOW_FEATURES = ("tokens", "words")


def bow_features(ids: list[int], text: str, vocab_size: int, buckets: int, ngrams: int = 2,
                 features: str = "words") -> list[int]:
    """Embedding rows a text's bag holds (fastText's inputs, Joulin et al. 2017, arXiv:1607.01759).

    ``features="tokens"``: the token ids and, with ``ngrams=2``, each token bigram ``(a, b)`` hashed to
    ``vocab_size + (a * 1_000_003 + b) % buckets``, every occurrence counted. ``features="words"`` adds the
    text's words and (``ngrams=2``) word bigrams, CRC-32 hashed into a second range of ``buckets`` rows after
    the first, and keeps each row once (binary features, which TF-IDF's sublinear counts approach).

    >>> bow_features([5, 7], "a b", vocab_size=10, buckets=4, features="tokens")
    [5, 7, 12]
    """
    out = list(ids)
    if ngrams == 2:
        out += [vocab_size + (a * 1_000_003 + b) % buckets for a, b in zip(ids, ids[1:])]
    if features == "tokens":
        return out
    base = vocab_size + (buckets if ngrams == 2 else 0)
    words = _WORD.findall(text.lower())
    grams = words + ([f"{a} {b}" for a, b in zip(words, words[1:])] if ngrams == 2 else [])
    out += [base + zlib.crc32(g.encode("utf-8")) % buckets for g in grams]
    return list(dict.fromkeys(out))


def bow_rows(vocab_size: int, buckets: int, ngrams: int, features: str) -> int:
    """Rows of the bag of words' embedding table: the vocabulary and each hashed range."""
    return vocab_size + buckets * ((ngrams == 2) + (features == "words"))


class BagOfWords(nn.Module):
    """fastText-style: the mean of the embedding rows of a text's features (:func:`bow_features`), then one Linear.

    The table is an ``nn.EmbeddingBag`` with sparse gradients: a step touches only the rows its batch holds, and
    ``hwlm train`` updates them with ``torch.optim.SparseAdam`` (a dense optimizer would read and write the whole
    table every step). Its input is already features (``ids`` (B, N) padded, ``mask`` True on real ones)."""

    def __init__(self, vocab_size: int, n_classes: int, pad_id: int, embed: int = 64, ngrams: int = 2,
                 buckets: int = 1 << 16, dropout: float = 0.0, features: str = "tokens") -> None:
        super().__init__()
        if ngrams not in (1, 2):
            raise ConfigError(f"ngrams is {ngrams}; the bag of words takes 1 (tokens) or 2 (tokens and bigrams)")
        if features not in BOW_FEATURES:
            raise ConfigError(f"bag-of-words features {features!r} are unknown; choose one of "
                              f"{', '.join(BOW_FEATURES)}")
        self.vocab_size, self.ngrams, self.buckets, self.features = vocab_size, ngrams, buckets, features
        self.embed = nn.EmbeddingBag(bow_rows(vocab_size, buckets, ngrams, features), embed, mode="mean", sparse=True)
        nn.init.uniform_(self.embed.weight, -1.0 / embed, 1.0 / embed)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(embed, n_classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        counts = mask.sum(1)  # (B,)
        offsets = torch.zeros_like(counts)
        offsets[1:] = counts.cumsum(0)[:-1]
        pooled = self.embed(ids[mask], offsets)  # (B, E): the mean of each bag (an empty bag gives zeros)
        return self.head(self.drop(pooled))


class DigitsMLP(nn.Module):
    """Features -> hidden -> ReLU -> dropout -> hidden -> ReLU -> classes (the source's digits example)."""

    def __init__(self, n_features: int, n_classes: int, hidden: int = 128, layers: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        dims = [n_features] + [hidden] * layers
        body: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            body += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(dims[-1], n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.body(x))


def wide_deep_row(ids: list[int], features: list[int], offset: int) -> list[int]:
    """A wide & deep input row: the tokens (all below ``offset``, the trunk's vocabulary), then the bag's features
    shifted by ``offset``.

    >>> wide_deep_row([5, 7], [5, 7, 12], offset=10)
    [5, 7, 15, 17, 22]
    """
    return list(ids) + [offset + f for f in features]


class WideDeepClassifier(nn.Module):
    """Wide & deep: ``deep`` (a :class:`TransformerClassifier`) and ``wide`` (a :class:`BagOfWords`) read the
    same text; the class logits are the sum of theirs (one linear layer over the concatenation of the pooled
    state and the averaged bag, as Cheng et al. 2016 join their parts), and both train together.

    Input rows come from :func:`wide_deep_row`: ids below ``offset`` (= the trunk's vocabulary) are the
    tokens, in order at the start of each row; ids from ``offset`` on are the bag's features (laid out as a
    :class:`BagOfWords` of ``vocab_size``, the data's vocabulary, lays them out)."""

    def __init__(self, trunk_cfg: ModelConfig, n_classes: int, pooling: str, vocab_size: int, pad_id: int,
                 embed: int = 32, ngrams: int = 2, buckets: int = 1 << 16, dropout: float = 0.0,
                 features: str = "words", staged: bool = False) -> None:
        super().__init__()
        self.offset, self.pad_id = trunk_cfg.vocab_size, pad_id
        self.deep = TransformerClassifier(trunk_cfg, n_classes, pooling)
        self.wide = BagOfWords(vocab_size, n_classes, pad_id, embed, ngrams, buckets, dropout, features)
        if staged:  # --wide-epochs: the parts are fitted one after the other; the deep logits' weight is chosen on val
            self.register_buffer("deep_weight", torch.tensor(1.0))
        # Which part a forward runs (the staged fit sets it; not saved): "both"; "wide" or "deep": that part alone.
        self.parts = "both"

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        wide = deep = None
        if self.parts in ("both", "wide"):
            bag = mask & (ids >= self.offset)  # (B, N)
            wide = self.wide((ids - self.offset).clamp_min(0), bag)  # (B, K)
        if self.parts in ("both", "deep"):
            tok = mask & (ids < self.offset)  # (B, N): the tokens, a prefix of each row's real entries
            width = max(1, int(tok.sum(1).max()))
            tok = tok[:, :width]  # (B, T)
            deep = self.deep(torch.where(tok, ids[:, :width], self.pad_id), tok)  # (B, K)
        if wide is None or deep is None:
            return wide if deep is None else deep
        if hasattr(self, "deep_weight"):
            deep = self.deep_weight * deep
        return wide + deep  # (B, K)


def build_classifier(spec: dict[str, Any]) -> nn.Module:
    """The model a spec describes (see the module docstring); unknown kinds are a ConfigError."""
    kind, k = spec.get("kind"), int(spec["n_classes"])
    if kind == "transformer":
        from hwlm.config import from_dict

        return TransformerClassifier(from_dict(ModelConfig, spec["trunk"], where="classifier trunk"), k,
                                     spec.get("pooling", "last"))
    if kind == "lstm":
        return LSTMClassifier(spec["vocab_size"], k, spec["pad_id"], spec["embed"], spec["hidden"], spec["layers"],
                              spec["dropout"])
    if kind == "bow":
        return BagOfWords(spec["vocab_size"], k, spec["pad_id"], spec["embed"], spec["ngrams"], spec["buckets"],
                          spec["dropout"], spec.get("features", "tokens"))
    if kind == "mlp":
        return DigitsMLP(spec["n_features"], k, spec["hidden"], spec["layers"], spec["dropout"])
    if kind == "wide-deep":
        from hwlm.config import from_dict

        w = spec["wide"]
        return WideDeepClassifier(from_dict(ModelConfig, spec["trunk"], where="classifier trunk"), k,
                                  spec.get("pooling", "last"), w["vocab_size"], spec["pad_id"], w["embed"],
                                  w["ngrams"], w["buckets"], w["dropout"], w["features"], w.get("staged", False))
    raise ConfigError(f"classifier kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
