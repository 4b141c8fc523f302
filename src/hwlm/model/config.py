"""The model's shape: a torch-free ``ModelConfig`` dataclass and its named presets.

Two flavours share one Transformer (see ``transformer.py``):

| flavour | norm      | positions | MLP            | attention          | biases |
|---------|-----------|-----------|----------------|--------------------|--------|
| gpt2    | LayerNorm | learned   | GELU (tanh)    | multi-head         | yes    |
| llama   | RMSNorm   | rotary    | SwiGLU         | grouped-query      | no     |

Fields left as ``None`` (``n_kv_head``, ``d_ff``, ``bias``) take the flavour's default in
``__post_init__``, so a saved config always holds resolved numbers.

    >>> cfg = ModelConfig.from_name("tiny", vocab_size=4096)
    >>> cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.d_ff
    (4, 4, 128, 64, 512)

This module never imports torch, so the CLI can build its parser and the planner can
count parameters (``cfg.to_arch()``) without it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Any, Literal

from hwlm.config import from_dict, option
from hwlm.errors import ConfigError
from hwlm.formulas import ArchSpec

__all__ = ["ModelConfig", "PRESETS", "FLAVOURS", "swiglu_hidden"]

FLAVOURS = ("gpt2", "llama")

# Named shapes. Sizes are the ones nanoGPT / GPT-2 use (gpt2-124m: Radford et al. 2019,
# vocabulary padded from 50257 to 50304 = 64 * 786 for faster matmuls, as nanoGPT does).
# The llama-* presets are the same shapes with Llama's components (Touvron et al. 2023)
# and half as many key/value heads as query heads. vocab_size is normally replaced by
# the caller with the tokenizer's size.
PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(flavour="gpt2", n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=512),
    "tiny": dict(flavour="gpt2", n_layer=4, n_head=4, n_embd=128, block_size=64),
    "mid": dict(flavour="gpt2", n_layer=6, n_head=6, n_embd=384, block_size=256),
    "gpt2-124m": dict(flavour="gpt2", n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
    "llama-debug": dict(flavour="llama", n_layer=2, n_head=2, n_kv_head=1, n_embd=16, block_size=32,
                        vocab_size=512),
    "llama-tiny": dict(flavour="llama", n_layer=4, n_head=4, n_kv_head=2, n_embd=128, block_size=64),
    "llama-mid": dict(flavour="llama", n_layer=6, n_head=6, n_kv_head=2, n_embd=384, block_size=256),
}


def swiglu_hidden(n_embd: int, multiple_of: int = 64) -> int:
    """Llama's SwiGLU width: 2/3 of 4 * n_embd (same parameters as a 4x GELU MLP), rounded up.

    >>> swiglu_hidden(128)
    384
    """
    hidden = int(2 * 4 * n_embd / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class ModelConfig:
    """Shape and flavour of a decoder-only Transformer."""

    flavour: Literal["gpt2", "llama"] = option("gpt2", "gpt2 (LayerNorm, learned positions, GELU) or llama "
                                                         "(RMSNorm, rotary, SwiGLU, grouped-query attention)")
    vocab_size: int = option(50304, "vocabulary size; normally set from the tokenizer")
    block_size: int = option(1024, "context length in tokens")
    n_layer: int = option(12, "number of Transformer blocks")
    n_head: int = option(12, "number of query heads")
    n_kv_head: int | None = option(None, "number of key/value heads (grouped-query attention); default n_head")
    n_embd: int = option(768, "model width (embedding size)")
    d_ff: int | None = option(None, "MLP hidden width; default 4*n_embd (gpt2) or the SwiGLU width (llama)")
    bias: bool | None = option(None, "biases in linear layers and LayerNorm; default True for gpt2, False for llama")
    tie_embeddings: bool = option(True, "share the token embedding with the output layer")
    dropout: float = option(0.0, "dropout probability in [0, 1) while training")
    rope_theta: float = option(10000.0, "rotary base frequency (llama flavour)")
    norm_eps: float = option(1e-5, "epsilon of LayerNorm / RMSNorm")

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"unknown model flavour {self.flavour!r}; choose one of {', '.join(FLAVOURS)}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.n_embd if self.flavour == "gpt2" else swiglu_hidden(self.n_embd)
        if self.bias is None:
            self.bias = self.flavour == "gpt2"
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}: "
                              f"choose n_embd as a multiple of n_head")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}: "
                              f"choose n_kv_head as a divisor of n_head")
        if self.flavour == "gpt2" and self.n_kv_head != self.n_head:
            raise ConfigError(f"the gpt2 flavour has no grouped-query attention (n_kv_head {self.n_kv_head} "
                              f"!= n_head {self.n_head}): use flavour llama or set n_kv_head = n_head")
        if self.flavour == "llama" and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head size, got {self.head_dim}: "
                              f"change n_embd or n_head")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ConfigError(f"rope_theta and norm_eps must be positive, got {self.rope_theta} and {self.norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset by name, with fields replaced by ``overrides`` (e.g. ``vocab_size``)."""
        if name not in PRESETS:
            close = difflib.get_close_matches(name, PRESETS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown model preset {name!r}: {hint}known presets: {', '.join(PRESETS)}")
        return from_dict(cls, {**PRESETS[name], **overrides}, where=f"model preset {name!r}")

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        """A copy with another vocabulary size (validated)."""
        return replace(self, vocab_size=vocab_size)

    def to_arch(self) -> ArchSpec:
        """The shape in the torch-free form that ``hwlm.formulas`` counts."""
        gpt2 = self.flavour == "gpt2"
        return ArchSpec(
            vocab_size=self.vocab_size, d_model=self.n_embd, n_layers=self.n_layer, n_heads=self.n_head,
            n_kv_heads=self.n_kv_head, head_dim=self.head_dim, d_ff=self.d_ff,
            mlp="gelu" if gpt2 else "swiglu", norm="layernorm" if gpt2 else "rmsnorm",
            pos="learned" if gpt2 else "rope", max_positions=self.block_size,
            tied_embeddings=self.tie_embeddings, qkv_bias=bool(self.bias), out_bias=bool(self.bias),
            mlp_bias=bool(self.bias), norm_bias=bool(self.bias) if gpt2 else False,
        )
