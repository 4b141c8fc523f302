"""Torch-free parameter, FLOP and memory formulas for decoder (and encoder) Transformers.

These are the *one* place where hwlm counts parameters and FLOPs: training uses them
for MFU, the planner for every prediction, and tests check them against real PyTorch
modules, ``torch.utils.flop_counter`` and Hugging Face ``transformers``.

Conventions (PaLM, Chowdhery et al. 2022, appendix B; Kaplan et al. 2020, table 1):
a multiply-add is 2 FLOPs; the backward pass costs twice the forward; attention
score FLOPs count the full T x T product (a causal kernel may skip half of it, but
MFU by convention counts it whole, so numbers compare across tools).

Worked example: GPT-2 small (124M)

    >>> spec = ArchSpec(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, max_positions=1024)
    >>> param_count(spec).total
    124439808
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ArchSpec", "ParamCount", "param_count", "forward_flops_per_token",
           "train_flops_per_token", "kv_cache_bytes_per_token", "PRECISIONS", "PRECISION_CHOICES",
           "WEIGHT_BYTES"]


@dataclass(frozen=True)
class ArchSpec:
    """The shape of a Transformer, enough to count its parameters and FLOPs."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None          # None: same as n_heads (no grouped-query attention)
    head_dim: int | None = None            # None: d_model // n_heads
    d_ff: int | None = None                # None: 4 * d_model
    mlp: Literal["gelu", "swiglu"] = "gelu"  # swiglu: gated MLP with three matrices
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    pos: Literal["learned", "rope", "none"] = "learned"
    max_positions: int = 1024              # rows of the learned position table
    tied_embeddings: bool = True
    qkv_bias: bool = True
    out_bias: bool = True                  # attention output projection bias
    mlp_bias: bool = True
    norm_bias: bool | None = None          # None: True for layernorm, False for rmsnorm
    # Mixture of experts (n_experts > 1): each MoE layer has n_experts routed MLPs of
    # width moe_d_ff, of which experts_per_token run per token, plus n_shared_experts
    # always-on MLPs of width moe_d_ff and a router (d_model x n_experts).
    n_experts: int = 1
    experts_per_token: int = 1
    moe_d_ff: int | None = None            # None: d_ff
    n_shared_experts: int = 0
    first_dense_layers: int = 0            # leading layers with a dense MLP (DeepSeek style)
    # Encoders (BERT style): extra embeddings and heads counted as-is.
    causal: bool = True
    extra_params: int = 0                  # parameters outside the blocks (token types, pooler, heads)
    final_norm: bool = True                # a norm after the last block (BERT has none: post-LN)
    # Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434), on when kv_lora_rank > 0:
    # keys/values pass through a rank-kv_lora_rank bottleneck that is what the KV cache stores;
    # head_dim is then the non-rotary query/key part and qk_rope_head_dim the rotary part.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0                   # 0: queries projected straight from d_model
    qk_rope_head_dim: int = 0
    v_head_dim: int | None = None          # None: head_dim

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hd(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def ff(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def vd(self) -> int:
        """Value head width (differs from the query/key width only under MLA)."""
        return self.v_head_dim or self.hd

    @property
    def qk_dim(self) -> int:
        """Query/key head width used in the score product."""
        return self.hd + self.qk_rope_head_dim

    @property
    def has_norm_bias(self) -> bool:
        return self.norm == "layernorm" if self.norm_bias is None else self.norm_bias


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts. ``active`` is what one token touches (differs from total for MoE)."""

    total: int
    active: int
    embedding: int        # token (and learned position) embedding tables
    lm_head: int          # untied output matrix, 0 when tied
    matmul_active: int    # weights used in matrix products per token (for FLOPs)

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def _mlp_params(d: int, ff: int, gated: bool, bias: bool) -> int:
    mats = 3 if gated else 2
    b = ((2 * ff if gated else ff) + d) if bias else 0
    return mats * d * ff + b


def _attn_params(spec: ArchSpec) -> tuple[int, int]:
    """(all parameters, matrix-product weights) of one attention block."""
    d, hd, H, K = spec.d_model, spec.hd, spec.n_heads, spec.kv_heads
    out_b = d if spec.out_bias else 0
    if spec.kv_lora_rank <= 0:
        mm = d * H * hd + 2 * d * K * hd + H * hd * d
        return mm + ((H * hd + 2 * K * hd) if spec.qkv_bias else 0) + out_b, mm
    # MLA (HF DeepseekV2Attention): q (optionally through a q_lora bottleneck with its norm),
    # kv_a: d -> kv_lora + rope, kv norm, kv_b: kv_lora -> H*(nope+v), o: H*v -> d.
    r, qr, q_hd = spec.kv_lora_rank, spec.q_lora_rank, spec.qk_dim
    q_mm = (d * qr + qr * H * q_hd) if qr else d * H * q_hd
    mm = q_mm + d * (r + spec.qk_rope_head_dim) + r * H * (hd + spec.vd) + H * spec.vd * d
    extra = r + (qr if qr else 0)  # the bottleneck RMSNorms
    if spec.qkv_bias:
        extra += (r + spec.qk_rope_head_dim) + (qr if qr else 0)
    return mm + extra + out_b, mm


def param_count(spec: ArchSpec) -> ParamCount:
    """Count parameters exactly as the PyTorch / Hugging Face module would."""
    d = spec.d_model
    gated = spec.mlp == "swiglu"
    attn, attn_mm = _attn_params(spec)
    norms = 2 * d * (2 if spec.has_norm_bias else 1)
    dense_mlp = _mlp_params(d, spec.ff, gated, spec.mlp_bias)
    n_moe = spec.n_layers - spec.first_dense_layers if spec.n_experts > 1 else 0
    n_dense = spec.n_layers - n_moe
    eff = spec.moe_d_ff or spec.ff
    expert = _mlp_params(d, eff, gated, spec.mlp_bias)
    router = d * spec.n_experts if n_moe else 0
    moe_total = spec.n_experts * expert + spec.n_shared_experts * expert + router
    moe_active = spec.experts_per_token * expert + spec.n_shared_experts * expert + router

    embedding = spec.vocab_size * d + (spec.max_positions * d if spec.pos == "learned" else 0)
    lm_head = 0 if spec.tied_embeddings else spec.vocab_size * d
    final_norm = d * (2 if spec.has_norm_bias else 1) if spec.final_norm else 0
    common = spec.n_layers * (attn + norms) + n_dense * dense_mlp + embedding + lm_head + final_norm
    total = common + n_moe * moe_total + spec.extra_params
    active = common + n_moe * moe_active + spec.extra_params

    # Weights in matrix products per token: attention projections, MLP matrices, LM head.
    mats = 3 if gated else 2
    mlp_mm = n_dense * mats * d * spec.ff + n_moe * (
        (spec.experts_per_token + spec.n_shared_experts) * mats * d * eff + router)
    head_mm = spec.vocab_size * d if spec.causal else 0
    matmul_active = spec.n_layers * attn_mm + mlp_mm + head_mm
    return ParamCount(total=total, active=active, embedding=embedding, lm_head=lm_head,
                      matmul_active=matmul_active)


def forward_flops_per_token(spec: ArchSpec, seq_len: int) -> float:
    """Forward FLOPs per token at context ``seq_len``: 2 x matmul weights + attention scores.

    Attention per layer and token: QK^T costs 2 * seq_len * n_heads * qk_head_dim and AV
    2 * seq_len * n_heads * v_head_dim (both head_dim unless MLA).
    """
    pc = param_count(spec)
    attn_scores = spec.n_layers * 2 * seq_len * spec.n_heads * (spec.qk_dim + spec.vd)
    return float(2 * pc.matmul_active + attn_scores)


def train_flops_per_token(spec: ArchSpec, seq_len: int) -> float:
    """Training FLOPs per token: forward + backward (twice the forward) = 3x forward."""
    return 3.0 * forward_flops_per_token(spec, seq_len)


def kv_cache_bytes_per_token(spec: ArchSpec, bytes_per_elem: float = 2.0) -> float:
    """Bytes of K and V cache one token occupies across all layers.

    Grouped-query attention stores n_kv_heads (not n_heads) keys and values; MLA stores
    the compressed latent (kv_lora_rank) plus the shared rotary key, as vLLM/SGLang do.
    """
    if spec.kv_lora_rank > 0:
        return float(spec.n_layers * (spec.kv_lora_rank + spec.qk_rope_head_dim) * bytes_per_elem)
    return float(spec.n_layers * spec.kv_heads * (spec.hd + spec.vd) * bytes_per_elem)


# Precision names shared by every command that runs a model (compress, generate, bench, serve) and by the
# planner: weights x activations. ``w8a8`` = int8 weights and int8 dynamic per-token activations; ``w8a16``
# and ``w4a16`` = int8 / int4 weights with 16-bit activations (dequantised inside the kernel). ``auto``
# picks one by a short measurement on this machine and records the choice (hwlm.compress.quant).
PRECISIONS = ("fp32", "bf16", "fp16", "fp8", "w8a8", "w8a16", "w4a16")
PRECISION_CHOICES = PRECISIONS + ("auto",)
# Bytes per weight on disk and in memory (int4 packs two weights per byte; scales not counted).
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "w8a8": 1.0, "w8a16": 1.0, "w4a16": 0.5}
