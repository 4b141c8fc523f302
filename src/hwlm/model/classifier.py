"""Classifiers: a Transformer with a pooled head, the source's LSTM, a fastText-style bag of words, a digits MLP.

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
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwlm.errors import ConfigError
from hwlm.model.config import ModelConfig
from hwlm.model.transformer import Transformer

__all__ = ["TransformerClassifier", "LSTMClassifier", "BagOfWords", "DigitsMLP", "build_classifier", "KINDS",
           "last_token_index"]

KINDS = ("transformer", "lstm", "bow", "mlp")


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
    """Embedding -> LSTM -> dense on the last real step's hidden state (the source's sentence classifier)."""

    def __init__(self, vocab_size: int, n_classes: int, pad_id: int, embed: int = 64, hidden: int = 128,
                 layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp_min(1).cpu()  # (B,)
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: (layers, B, H), the state after each row's last real token
        return self.head(self.drop(h[-1]))


class BagOfWords(nn.Module):
    """fastText-style: the mean of token and hashed token-bigram embeddings, then one Linear.

    Bigram ``(a, b)`` gets bucket ``(a * 1_000_003 + b) % buckets`` after the vocabulary's rows
    (Joulin et al. 2017 hash word n-grams the same way to bound memory)."""

    def __init__(self, vocab_size: int, n_classes: int, pad_id: int, embed: int = 64, ngrams: int = 2,
                 buckets: int = 1 << 16, dropout: float = 0.0) -> None:
        super().__init__()
        if ngrams not in (1, 2):
            raise ConfigError(f"ngrams is {ngrams}; the bag of words takes 1 (tokens) or 2 (tokens and bigrams)")
        self.vocab_size, self.ngrams, self.buckets = vocab_size, ngrams, buckets
        self.embed = nn.Embedding(vocab_size + (buckets if ngrams == 2 else 0), embed)
        nn.init.uniform_(self.embed.weight, -1.0 / embed, 1.0 / embed)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(embed, n_classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(torch.float32)
        feats, weights = [ids], [m]
        if self.ngrams == 2 and ids.shape[1] > 1:
            bigram = (ids[:, :-1] * 1_000_003 + ids[:, 1:]) % self.buckets + self.vocab_size  # (B, T-1)
            feats.append(bigram)
            weights.append(m[:, :-1] * m[:, 1:])
        ids_all, w = torch.cat(feats, 1), torch.cat(weights, 1)  # (B, N)
        e = self.embed(ids_all) * w.unsqueeze(-1)  # (B, N, E)
        pooled = e.sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)
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
                          spec["dropout"])
    if kind == "mlp":
        return DigitsMLP(spec["n_features"], k, spec["hidden"], spec["layers"], spec["dropout"])
    raise ConfigError(f"classifier kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
