"""Torch-free parameter, FLOP and memory formulas for decoder (and encoder) Transformers.

These are the *one* place where hwlm counts parameters, FLOPs and bytes: training uses them
for MFU, the planner for every prediction, and tests check them against real PyTorch
modules, ``torch.utils.flop_counter`` and Hugging Face ``transformers``.

Conventions (PaLM, Chowdhery et al. 2022, appendix B; Kaplan et al. 2020, table 1):
a multiply-add is 2 FLOPs; the backward pass costs twice the forward; attention
score FLOPs count the full T x T product (a causal kernel may skip half of it, but
MFU by convention counts it whole, so numbers compare across tools).

The names, by what they count (import them from here; no other module keeps a copy):

- shape and counts: ``ArchSpec``, ``param_count`` / ``ParamCount``, ``forward_flops_per_token``,
  ``train_flops_per_token``, ``kv_cache_bytes_per_token``; ``mfu`` (achieved / peak FLOP/s);
- data types: ``DTYPE_BYTES`` / ``dtype_bytes`` (bytes per element by short name), ``compute_bytes``
  (the activation width of a training precision), ``PRECISIONS`` and ``WEIGHT_BYTES`` (weights x
  activations schemes of compression and serving);
- training memory: ``StateBytes`` with ``ADAM_FP32`` (hwlm train: 4 + 4 + 8 bytes per parameter) and
  ``ADAM_MIXED`` (ZeRO's 2 + 2 + 12), ``saved_activation_bytes_per_layer`` and
  ``saved_outside_layers_bytes`` (what autograd saves, counted from the model), ``loss_transient_bytes``
  (the logits alive at the loss's backward), ``heap_slack_bytes`` (what a CPU heap keeps above the live
  peak) and ``training_memory`` / ``TrainingMemory`` (their sum on one device: the launch decision's and,
  sharded by a layout, the planner's figure); options ``RECOMPUTE``, ``ATTENTION_KERNELS``, ``LOSS_PATHS``;
- the small classifiers (LSTM, MLP, bag of words of ``hwlm.model.classifier``): ``ClassifierShape``,
  ``classifier_param_count``, ``classifier_forward_flops`` / ``classifier_train_flops``,
  ``classifier_activation_bytes`` (training's MFU and ``hwlm.plan.classifier``);
- training memory of other stacks: ``korthikanti_activation_bytes_per_layer`` and
  ``korthikanti_outside_layers_bytes`` (Megatron-style: 16-bit weights, no autocast copies; Korthikanti et
  al. 2022), the count ``ACTIVATION_COUNTS`` names ``"korthikanti"`` beside hwlm's own ``"hwlm"``.

Worked example: GPT-2 small (124M)

    >>> spec = ArchSpec(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, max_positions=1024)
    >>> param_count(spec).total
    124439808
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ArchSpec", "ParamCount", "param_count", "forward_flops_per_token", "lm_head_flops_per_token",
           "attention_flops_per_pair",
           "train_flops_per_token", "kv_cache_bytes_per_token", "PRECISIONS", "PRECISION_CHOICES",
           "WEIGHT_BYTES", "DTYPE_BYTES", "dtype_bytes", "compute_bytes", "kv_elem_bytes", "step_peak",
           "StateBytes", "ADAM_FP32",
           "ADAM_MIXED",
           "mfu", "RECOMPUTE", "ATTENTION_KERNELS", "LOSS_PATHS", "loss_path", "loss_chunk_rows", "saved_activation_bytes_per_layer",
           "saved_outside_layers_bytes", "loss_transient_bytes", "heap_slack_bytes", "TrainingMemory",
           "training_memory", "ACTIVATION_COUNTS", "korthikanti_activation_bytes_per_layer",
           "korthikanti_outside_layers_bytes", "ClassifierShape", "CLASSIFIER_KINDS", "classifier_param_count",
           "classifier_forward_flops", "classifier_train_flops", "classifier_activation_bytes"]


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
    return float(2 * param_count(spec).matmul_active + seq_len * attention_flops_per_pair(spec))


def attention_flops_per_pair(spec: ArchSpec) -> float:
    """Attention-score FLOPs of one (query, key) pair over all layers: 2 x heads x (qk + v) head dims per layer
    (QK^T and AV). A step's attention costs this times the pairs its kernel computes: the context of each
    query for a variable-length kernel, rows x padded queries x padded keys for a padded one.

    >>> attention_flops_per_pair(ArchSpec(vocab_size=50304, d_model=384, n_layers=6, n_heads=6))
    9216.0
    """
    return float(spec.n_layers * 2 * spec.n_heads * (spec.qk_dim + spec.vd))


def lm_head_flops_per_token(spec: ArchSpec) -> float:
    """Forward FLOPs of the output layer for one token (2 x vocab x d_model; 0 for an encoder): the part of
    :func:`forward_flops_per_token` an engine saves on every prompt token but the last when it computes
    logits only where it samples (vLLM, TensorRT-LLM, optimum-habana's ``--trim_logits``)."""
    return float(2 * spec.vocab_size * spec.d_model) if spec.causal else 0.0


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


# ---------------------------------------------------------------------------------------------
# Data-type widths, optimizer state, training memory and MFU: the one copy (callers import these).
# ---------------------------------------------------------------------------------------------

# Bytes per element of each storage type, by hwlm's short names (tf32 stores fp32; fp4/int4 pack two per byte).
DTYPE_BYTES: dict[str, float] = {"fp64": 8.0, "fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0,
                                 "fp4": 0.5, "int8": 1.0, "int4": 0.5}
RECOMPUTE = ("none", "selective", "full")
ATTENTION_KERNELS = ("flash", "math")
LOSS_PATHS = ("full", "chunked")


def loss_path(precision: str) -> str:
    """The loss path hwlm's training step takes at ``precision``: ``Transformer.forward(..., return_logits=False)``
    fuses the output layer and the loss in row chunks (``LinearCrossEntropy``) unless autocast is on, so fp32
    and tf32 train ``"chunked"`` and bf16/fp16 autocast ``"full"`` (``FusedCrossEntropy`` on whole logits).

    >>> loss_path("fp32"), loss_path("bf16")
    ('chunked', 'full')
    """
    return "chunked" if precision in ("fp32", "tf32") else "full"


def dtype_bytes(name: str) -> float:
    """Bytes per element of data type ``name``; unknown names raise ConfigError with the known ones.

    >>> dtype_bytes("bf16"), dtype_bytes("int4")
    (2.0, 0.5)
    """
    if name not in DTYPE_BYTES:
        from hwlm.errors import ConfigError
        raise ConfigError(f"unknown data type {name!r}; choose one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


def compute_bytes(precision: str) -> float:
    """Width of the activations a training precision computes in: 4 in fp32 (and tf32), else 2 (bf16/fp16
    autocast; fp8 training keeps 16-bit activations between its fp8 matmuls)."""
    return 4.0 if precision in ("fp32", "tf32") else 2.0


def kv_elem_bytes(precision: str, kv_dtype: str | None = None) -> float:
    """Bytes per cached key/value element when serving at ``precision``: fp8 serving stores its KV cache in fp8,
    fp32 (and tf32) engines in fp32 (the cache takes the model's dtype), the 16-bit and weight-only formats in 16
    bits. ``kv_dtype``, the data type an engine is known to keep its cache in, wins over that rule: hwlm's own
    engine keeps fp32 activations and an fp32 cache under w8a8/w8a16/w4a16 (:mod:`hwlm.plan.kv_cache` decides).

    >>> kv_elem_bytes("w8a8"), kv_elem_bytes("w8a8", "fp32"), kv_elem_bytes("fp8")
    (2.0, 4.0, 1.0)
    """
    return dtype_bytes(kv_dtype) if kv_dtype is not None else 1.0 if precision == "fp8" else compute_bytes(precision)


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of the training state: weights, gradients and optimizer state.

    Both layouts below total 16 bytes per parameter; they differ in what ZeRO can shard.

    >>> ADAM_FP32.total, ADAM_MIXED.total
    (16.0, 16.0)
    """

    weights: float
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


# hwlm train: fp32 weights (autocast casts per matmul), fp32 gradients, AdamW's two fp32 moments.
ADAM_FP32 = StateBytes(weights=4.0, gradients=4.0, optimizer=8.0)
# Mixed-precision accounting of ZeRO (Rajbhandari et al. 2020, arXiv:1910.02054, section 3.1): 16-bit
# weights and gradients, fp32 master copy + momentum + variance (12), the part stage 1 shards.
ADAM_MIXED = StateBytes(weights=2.0, gradients=2.0, optimizer=12.0)


def mfu(tokens_per_s: float | None, flops_per_token: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilization (PaLM, arXiv:2204.02311, appendix B): achieved / peak FLOP/s, None if unknown.

    >>> round(mfu(1000.0, 6e8, 1e12), 2)   # 1,000 tokens/s of a 100M model (6 N FLOPs/token) on 1 TFLOP/s
    0.6
    """
    if not tokens_per_s or not peak_flops:
        return None
    return tokens_per_s * flops_per_token / peak_flops


def saved_activation_bytes_per_layer(spec: ArchSpec, tokens: int, seq_len: int, precision: str = "fp32",
                                     attention: str = "flash", recompute: str = "none") -> float:
    """Bytes autograd saves for one block of hwlm's model over ``tokens`` = batch x seq_len tokens.

    Counted tensor by tensor from the model (``hwlm.model.transformer``), each stored once (views share
    storage), and checked against ``torch.autograd.graph.saved_tensors_hooks`` in tests/test_formulas.py.
    Per token, with C = d_model, H/K query/key-value heads of width D, F the MLP width:

    - norms: the input (residual stream, fp32) and its statistics (LayerNorm mean and 1/std; RMSNorm
      1/rms plus the normalized input, which its weight multiplies); the next matmul saves its own input;
    - attention: the fused q/k/v output (H + 2K) D (q, k, v are views of it), Llama's rotated q and k,
      the output H D and its transposed copy that ``c_proj`` reads; the ``flash`` kernel (what CPU and
      CUDA run with no mask and no dropout) keeps the log-sum-exp (H, fp32), the ``math`` kernel instead
      its own copies of q, k and v with k, v repeated to H heads, and the (H, T) attention probabilities
      (the 5 a s^2 b term of Korthikanti et al. 2022, arXiv:2205.05198);
    - MLP: its input, and GELU's input and output (F each) or SwiGLU's gate|up (2F), silu(gate) and the
      product (F each);
    - under bf16/fp16 autocast the matmul inputs and outputs are 16-bit and each matmul also saves its
      16-bit weight copy (counted per layer here; the residual stream and norm outputs stay fp32).

    Recompute (``hwlm train --recompute``, ``hwlm.model.recompute``): ``full`` checkpoints each block and
    keeps only its input (C, fp32); ``selective`` checkpoints the attention sublayer (``ln_1`` and
    attention), keeping its input and the MLP half's tensors. The recomputed region's set is alive
    again while its backward runs, which :func:`training_memory` adds once.

    >>> tiny = ArchSpec(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_positions=64)
    >>> saved_activation_bytes_per_layer(tiny, 16 * 64, 64) / 2**20  # 16 C per token in fp32 + statistics
    8.03125
    >>> [saved_activation_bytes_per_layer(tiny, 16 * 64, 64, recompute=r) / 2**20 for r in ("selective", "full")]
    [5.5078125, 0.5]
    """
    if recompute not in RECOMPUTE:
        from hwlm.errors import ConfigError
        raise ConfigError(f"recompute {recompute!r} is unknown; choose one of {', '.join(RECOMPUTE)}")
    if attention not in ATTENTION_KERNELS:
        from hwlm.errors import ConfigError
        raise ConfigError(f"attention kernel {attention!r} is unknown; choose one of {', '.join(ATTENTION_KERNELS)}")
    block_input = tokens * spec.d_model * 4.0  # the residual stream is fp32 (autocast keeps it so)
    if recompute == "full":
        return block_input
    attn, mlp = _attention_half_bytes(spec, tokens, seq_len, precision, attention), _mlp_half_bytes(spec, tokens, precision)
    return (block_input if recompute == "selective" else attn) + mlp


ACTIVATION_COUNTS = ("hwlm", "korthikanti")


def korthikanti_activation_bytes_per_layer(spec: ArchSpec, seq_len: int, micro_batch: int = 1,
                                           recompute: str = "none", tp: int = 1, *, precision: str = "bf16",
                                           attention: str = "flash", sequence_parallel: bool = True,
                                           dropout: bool = True) -> float:
    """Activation bytes one layer of a Megatron-style stack keeps (16-bit weights, no autocast copies).

    Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
    arXiv:2205.05198, section 4 and table 2, counted per tensor from the shape so that GQA, SwiGLU and
    any MLP width fit (s = seq_len, b = micro_batch, h = d_model, a = heads, F = MLP width, 16-bit values,
    1-byte dropout masks):

    - two norms' inputs, 4·sbh; attention: the QKV matmul's input 2·sbh, Q and K 2·sb(a+k)·D for k key/value
      heads of width D, V 2·sbk·D, the output projection's input 2·sb·a·D, its dropout mask sbh;
      softmax output 2·as²b, its dropout mask as²b and output 2·as²b (the 5·as²b term; attention dropout off:
      2·as²b) unless ``attention="flash"``, whose kernel keeps only the output and per-row statistics;
    - MLP: the input 2·sbh, GELU's input and output 2·sbF each (SwiGLU: the gate|up output 4·sbF and the
      product 2·sbF), its dropout mask sbh.

    For GPT's shape (F = 4h, a = k) that is the paper's 34·sbh + 5·as²b. ``selective`` recompute drops
    the s² terms (34·sbh), ``full`` keeps the layer input (2·sbh). Tensor parallelism with sequence
    parallelism divides all of it by t (table 2); without it only the 24·sbh inside the parallel regions
    (and the s² terms) are divided, and full recompute keeps 2·sbh. fp32 training doubles the 16-bit values.

    >>> gpt3 = ArchSpec(vocab_size=51200, d_model=12288, n_layers=96, n_heads=96)  # paper's 175B
    >>> sbh = 2048 * 1 * 12288
    >>> korthikanti_activation_bytes_per_layer(gpt3, 2048, attention="math") / sbh  # 34 + 5·a·s/h
    114.0
    >>> [korthikanti_activation_bytes_per_layer(gpt3, 2048, 1, r, tp=8) / sbh for r in ("selective", "full")]
    [4.25, 0.25]
    """
    if recompute not in RECOMPUTE:
        from hwlm.errors import ConfigError
        raise ConfigError(f"recompute {recompute!r} is unknown; choose one of {', '.join(RECOMPUTE)}")
    if attention not in ATTENTION_KERNELS:
        from hwlm.errors import ConfigError
        raise ConfigError(f"attention kernel {attention!r} is unknown; choose one of {', '.join(ATTENTION_KERNELS)}")
    if tp < 1:
        from hwlm.errors import ConfigError
        raise ConfigError(f"tp={tp!r} must be a whole number >= 1")
    sb, h, w = float(seq_len * micro_batch), spec.d_model, compute_bytes(precision)
    H, K, D, F = spec.n_heads, spec.kv_heads, spec.hd, spec.ff
    if recompute == "full":  # only the layer input (sharded along the sequence under sequence parallelism)
        return sb * h * w / (tp if sequence_parallel else 1)
    mask = 1.0 if dropout else 0.0
    # Outside the tensor-parallel regions (10·sbh for GPT, what only sequence parallelism shards): the two
    # norms' inputs, the QKV and first MLP matmuls' inputs (the norms' outputs) and the two dropout masks.
    outside = 4 * h * w + 2 * mask * h
    # Inside (24·sbh for GPT): Q, K, V, the projection's input and the MLP's activations.
    mlp = (3 if spec.mlp == "swiglu" else 2) * F * w
    inside = (H + 2 * K) * D * w + H * D * w + mlp
    per_token = outside / (tp if sequence_parallel else 1) + inside / tp
    if recompute == "none" and attention == "math":
        per_token += H * seq_len * (w + (mask + w) * (1 if dropout else 0)) / tp
    return sb * per_token


def korthikanti_outside_layers_bytes(spec: ArchSpec, seq_len: int, micro_batch: int = 1, tp: int = 1,
                                     precision: str = "bf16") -> float:
    """Activation bytes a Megatron-style stack keeps outside the layers: the final norm's input, the output
    layer's input (16-bit) and the fp32 logits the cross-entropy keeps, 4·sbh/t·(1 + v/h) (Korthikanti et al.
    2022, arXiv:2205.05198, section 4.3; the embedding dropout mask, which they call negligible, left out).

    >>> gpt3 = ArchSpec(vocab_size=51200, d_model=12288, n_layers=96, n_heads=96)
    >>> korthikanti_outside_layers_bytes(gpt3, 2048, 1, 8) / (4 * 2048 * 12288 / 8 * (1 + 51200 / 12288))
    1.0
    """
    sb, h, w = float(seq_len * micro_batch), spec.d_model, compute_bytes(precision)
    return sb * (2 * h * w + 4.0 * spec.vocab_size) / tp


def _norm_bytes(spec: ArchSpec) -> float:
    """Per token: a norm's input and statistics (LayerNorm mean and 1/std; RMSNorm 1/rms and the
    normalized input, which its weight multiplies), all fp32; the next matmul saves the output."""
    C, fp32 = spec.d_model, 4.0
    return C * fp32 + 2 * fp32 if spec.norm != "rmsnorm" else 2 * C * fp32 + fp32


def _matmul_weights16(spec: ArchSpec, mats: float, precision: str) -> float:
    """16-bit weight copies the matmuls save under autocast (none in fp32)."""
    cw = compute_bytes(precision)
    return mats * cw if cw < 4.0 else 0.0


def _attention_half_bytes(spec: ArchSpec, tokens: int, seq_len: int, precision: str, attention: str) -> float:
    """``ln_1`` + attention of one block (the region selective recompute checkpoints)."""
    C, H, K, D = spec.d_model, spec.n_heads, spec.kv_heads, spec.hd
    cw, fp32 = compute_bytes(precision), 4.0
    matmul_inputs = C * cw + H * D * cw      # c_attn reads ln_1's output, c_proj attention's output
    qkv = (H + 2 * K) * D * cw
    rope = (H + K) * D * cw if spec.pos == "rope" else 0.0
    if attention == "flash":
        # The kernel's output is laid out (B, T, H, D), so c_proj's (B, T, H*D) input is a view of it.
        core = qkv + rope + H * fp32     # + the log-sum-exp per head
    else:
        # math saves its own q (scaled), k^T and v at H heads (k, v repeated under grouped-query attention),
        # not the q/k/v output, and the (H, T) probabilities; it runs in fp32 under autocast (measured: its
        # saved tensors are fp32). Its output is (B, H, T, D), so c_proj's input is a copy.
        core = 3 * H * D * fp32 + H * seq_len * fp32
    per_token = _norm_bytes(spec) + matmul_inputs + core
    return tokens * per_token + _matmul_weights16(spec, C * (H + 2 * K) * D + H * D * C, precision)


def _mlp_half_bytes(spec: ArchSpec, tokens: int, precision: str) -> float:
    """``ln_2`` + MLP of one block: c_fc's input, then GELU's input and output (F each) or SwiGLU's
    gate|up (2F), silu(gate) and the product (F each)."""
    C, F, cw = spec.d_model, spec.ff, compute_bytes(precision)
    gated = spec.mlp == "swiglu"
    per_token = _norm_bytes(spec) + C * cw + (4 * F if gated else 2 * F) * cw
    return tokens * per_token + _matmul_weights16(spec, (3 if gated else 2) * C * F, precision)


def saved_outside_layers_bytes(spec: ArchSpec, tokens: int, precision: str = "fp32", loss: str = "full") -> float:
    """Bytes autograd saves outside the blocks: token ids, the final norm and the output layer + loss.

    ``loss="full"``: the output matmul's input and ``FusedCrossEntropy``'s fp32 gradient of the (N, V) logits
    (under autocast also the 16-bit copy of the output weight); ``loss="chunked"`` (``LinearCrossEntropy``):
    the input and weight gradients it computed in the forward, (N, C) and (V, C) in fp32.

    >>> tiny = ArchSpec(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_positions=64)
    >>> saved_outside_layers_bytes(tiny, 1024) / 2**20   # dominated by the (1024, 2048) fp32 gradient
    9.015625
    """
    if loss not in LOSS_PATHS:
        from hwlm.errors import ConfigError
        raise ConfigError(f"loss path {loss!r} is unknown; choose one of {', '.join(LOSS_PATHS)}")
    C, V, cw, fp32 = spec.d_model, spec.vocab_size, compute_bytes(precision), 4.0
    rms = spec.norm == "rmsnorm"
    per_token = 8.0 + C * fp32 + (1 if rms else 2) * fp32 + (C * fp32 if rms else 0.0)  # int64 ids, ln_f
    if loss == "chunked":
        return tokens * (per_token + C * fp32) + V * C * fp32
    head16 = V * C * cw if cw < fp32 else 0.0
    return tokens * (per_token + C * cw + V * fp32) + head16


def loss_chunk_rows(vocab_size: int, device_kind: str = "cpu") -> int:
    """Rows of logits the chunked loss computes at once: about 4 MiB of fp32 on a CPU, at least 64 rows
    (256 at V = 4096, measured faster than 2 MiB, whose thinner matmuls lose more than the softmax passes
    gain from staying in L2), and 64 MiB, at least 1024 rows, elsewhere.

    >>> loss_chunk_rows(4096), loss_chunk_rows(50257, "cuda")
    (256, 1024)
    """
    if device_kind == "cpu":
        return max(64, (4 << 20) // (4 * vocab_size))
    return max(1024, (64 << 20) // (4 * vocab_size))


def loss_transient_bytes(spec: ArchSpec, tokens: int, precision: str = "fp32", loss: str = "full",
                         device_kind: str = "cpu", compiled: bool = False) -> float:
    """Bytes alive at the loss's backward beyond what autograd saved: the step's peak in hwlm training.

    ``full``: the (N, V) logits the training step holds (compute width), the fp32 product
    ``grad * grad_loss`` of ``FusedCrossEntropy.backward`` and, under autocast, its 16-bit cast: with the
    saved fp32 gradient, 12 bytes per logit in fp32 and in bf16. ``chunked``: the one (rows, V) fp32 logits
    buffer ``LinearCrossEntropy`` reuses (rows = 4 MiB / (4 V), at least 64, on a CPU; 64 MiB, at least
    1024 rows, elsewhere).

    >>> tiny = ArchSpec(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_positions=64)
    >>> loss_transient_bytes(tiny, 1024) / 2**20, loss_transient_bytes(tiny, 1024, loss="chunked") / 2**20
    (16.0, 4.0)
    """
    V, cw, fp32 = spec.vocab_size, compute_bytes(precision), 4.0
    if loss == "chunked":
        return min(loss_chunk_rows(V, device_kind), tokens) * V * fp32
    if compiled:
        # torch.compile fuses the backward's product and cast into the kernel that reads the saved gradient;
        # what stays is the 16-bit logits and, under autocast, their fp32 copy: 10 bytes per logit in bf16
        # with the saved gradient, 8 in fp32 (gpt2-124m, b=16, s=1024 on an H200: 15.6 GB peak allocated,
        # benchmarks/results/h200-2026-11-28/train-gpt2-124m.json).
        return tokens * V * (cw + (fp32 if cw < fp32 else 0.0))
    return tokens * V * (cw + fp32 + (cw if cw < fp32 else 0.0))


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one device holds at the training step's peak (the loss's backward), by part."""

    weights: float
    gradients: float
    optimizer: float
    activations: float      # saved by autograd: the blocks, the final norm, the output layer and loss
    loss: float             # alive at the loss's backward beyond the saved tensors (:func:`loss_transient_bytes`)
    autocast_copies: float  # 16-bit weight copies that autocast caches for the forward, beyond the saved ones
    allocator_slack: float = 0.0  # CPU heap kept above the live peak (:func:`heap_slack_bytes`)
    gradients_at_forward: bool = True  # gradients alive beside the saved activations (see :func:`training_memory`)

    @property
    def total(self) -> float:
        return (step_peak(self.weights, self.gradients, self.optimizer, self.activations + self.loss,
                          self.gradients_at_forward) + self.autocast_copies + self.allocator_slack)


def step_peak(weights: float, gradients: float, optimizer: float, activations: float,
              gradients_at_forward: bool = True) -> float:
    """A training step's peak from its parts: the sum, or, where the gradients are freed between steps (one
    process, one micro-batch a step), the larger end of the backward, ``max(gradients, activations)``
    (:func:`training_memory`). The one rule for :class:`TrainingMemory` and the planner's layouts."""
    live = gradients + activations if gradients_at_forward else max(gradients, activations)
    return weights + optimizer + live


def heap_slack_bytes(spec: ArchSpec, tokens: int, loss: str = "full", device_kind: str = "cpu") -> float:
    """Heap a CPU run keeps above its live peak: one of the step's largest blocks, 0 on accelerators.

    ``hwlm train`` on a CPU keeps freed memory in the heap (``hwlm.train.runtime.keep_freed_memory``: no trimming, no
    mmap), so the resident heap is the high-water mark of glibc's heap, not the live peak. From the second
    step on, long-lived allocations made during the first one (AdamW's moments, the loss scalars, logging)
    sit in the holes the first step's blocks left, and the largest block of a step no longer fits its old
    hole: it is taken from the top of the heap once and the heap keeps both. That block is an (N, V) fp32
    logits-sized buffer on the ``full`` loss path, and on the ``chunked`` one the largest of the (N, F) MLP
    activation, the (V, C) weight gradient and the loss's chunk buffer. CUDA's caching allocator reports
    live bytes (``max_memory_allocated``), which this term does not concern.

    >>> tiny = ArchSpec(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_positions=64)
    >>> heap_slack_bytes(tiny, 1024) / 2**20   # one (1024, 2048) fp32 block
    8.0
    """
    if device_kind != "cpu":
        return 0.0
    V, C, fp32 = spec.vocab_size, spec.d_model, 4.0
    if loss == "full":
        return tokens * V * fp32
    mlp = (2 if spec.mlp == "swiglu" else 1) * spec.ff
    return max(tokens * mlp * fp32, V * C * fp32, loss_transient_bytes(spec, tokens, "fp32", "chunked", device_kind))


def training_memory(spec: ArchSpec, batch: int, seq_len: int, precision: str = "fp32", *, recompute: str = "none",
                    attention: str = "flash", loss: str | None = None, compiled: bool = False, device_kind: str = "cpu",
                    state: StateBytes = ADAM_FP32, params: int | None = None,
                    gradients_at_forward: bool = False) -> TrainingMemory:
    """Training memory of one unsharded device with micro-batch ``batch``: the launch decision's and the
    planner's figure (the planner divides the parts by its layout's degrees, ``hwlm.plan.parallel``).

    ``loss`` defaults to the path hwlm's training step takes at ``precision`` (:func:`loss_path`).

    The step's peak: one process stepping once per micro-batch frees its gradients between steps
    (``zero_grad(set_to_none=True)``), so the backward starts with every saved activation and no gradient
    and ends with every gradient and (almost) no activation; each layer's gradients appear as its saved
    tensors go. The peak is the larger end, ``max(gradients, activations + loss)``: checked against the
    allocator's own trace of ``hwlm train`` (``benchmarks/train_memory.py``, within 2.2% on six of eight
    cases). ``gradients_at_forward=True`` counts both, for runs whose gradients exist before the forward:
    DDP (its buckets are allocated once, for the whole run), gradient accumulation past the first
    micro-batch, Megatron-style contiguous gradient buffers; the planner's layouts assume it.

    >>> tiny = ArchSpec(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_positions=64)
    >>> round(training_memory(tiny, 16, 64).total / 2**20, 1)   # quickstart's model and batch, fp32 on a CPU
    54.3
    >>> round(training_memory(tiny, 16, 64, gradients_at_forward=True).total / 2**20, 1)   # DDP or accumulating
    58.4
    >>> round(training_memory(tiny, 16, 64, loss="full").total / 2**20, 1)   # with whole (N, V) logits
    77.3
    """
    tokens = batch * seq_len
    loss = loss_path(precision) if loss is None else loss
    n = param_count(spec).total if params is None else params
    per_layer = saved_activation_bytes_per_layer(spec, tokens, seq_len, precision, attention, recompute)
    acts = spec.n_layers * per_layer + saved_outside_layers_bytes(spec, tokens, precision, loss)
    if recompute != "none":
        # While a region's backward runs, its saved set exists again (recomputed), once at a time.
        acts += saved_activation_bytes_per_layer(spec, tokens, seq_len, precision, attention, "none") - per_layer
    copies = 0.0
    if compute_bytes(precision) < 4.0 and recompute != "none":
        # Checkpointed regions save no weight copies, but autocast's cache keeps one per weight for the forward.
        copies = param_count(spec).matmul_active * compute_bytes(precision)
    return TrainingMemory(weights=state.weights * n, gradients=state.gradients * n, optimizer=state.optimizer * n,
                          activations=acts, loss=loss_transient_bytes(spec, tokens, precision, loss, device_kind, compiled),
                          autocast_copies=copies, allocator_slack=heap_slack_bytes(spec, tokens, loss, device_kind),
                          gradients_at_forward=gradients_at_forward)


# ---------------------------------------------------------------------------------------------
# The small classifiers of hwlm.model.classifier (the LSTM, the digits MLP, the bag of words): their counts.
# ---------------------------------------------------------------------------------------------

CLASSIFIER_KINDS = ("lstm", "mlp", "bow")


@dataclass(frozen=True)
class ClassifierShape:
    """The shape of a non-Transformer classifier, enough to count its parameters, FLOPs and bytes.

    ``from_spec`` reads the ``classifier`` spec a run saves (``hwlm.model.classifier.build_classifier``).
    LSTM: embedding (``vocab_size`` x ``embed``), ``layers`` stacked LSTMs of state ``hidden``, a dense head.
    MLP: ``n_features`` -> ``hidden`` (x ``layers``) -> classes. Bag of words: ``vocab_size`` + ``buckets``
    embedding rows (``buckets``: all its hashed rows), their mean, a dense head.
    """

    kind: Literal["lstm", "mlp", "bow"]
    n_classes: int
    vocab_size: int = 0
    embed: int = 64
    hidden: int = 128
    layers: int = 1
    n_features: int = 0
    buckets: int = 0

    @classmethod
    def from_spec(cls, spec: dict) -> "ClassifierShape":
        kind = spec.get("kind")
        if kind not in CLASSIFIER_KINDS:
            from hwlm.errors import ConfigError
            raise ConfigError(f"classifier kind {kind!r} has no formula here; choose one of {', '.join(CLASSIFIER_KINDS)}")
        keys = {"n_classes", "vocab_size", "embed", "hidden", "layers", "n_features"}
        kw = {k: int(spec[k]) for k in keys if spec.get(k) is not None}
        if kind == "bow":  # hashed rows: token bigrams (ngrams 2), then words and word bigrams (features "words")
            ranges = (int(spec.get("ngrams", 2)) == 2) + (spec.get("features", "tokens") == "words")
            kw["buckets"] = int(spec["buckets"]) * ranges
        return cls(kind=kind, **kw)

    def lstm_layers(self) -> list[tuple[int, int]]:
        """(input width, state width) of each LSTM layer."""
        return [(self.embed if i == 0 else self.hidden, self.hidden) for i in range(self.layers)]

    def mlp_layers(self) -> list[tuple[int, int]]:
        """(in, out) of each Linear of the MLP, the head last."""
        dims = [self.n_features] + [self.hidden] * self.layers
        return list(zip(dims, dims[1:])) + [(dims[-1], self.n_classes)]


def classifier_param_count(shape: ClassifierShape) -> int:
    """Parameters exactly as torch counts them (``nn.LSTM`` keeps two bias vectors per layer, ``b_ih`` and ``b_hh``).

    An LSTM layer of input ``n`` and state ``h`` holds 4 gates' weights 4h(n + h) and biases 2 x 4h
    (Hochreiter & Schmidhuber 1997; torch.nn.LSTM's documented ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_*``).

    >>> classifier_param_count(ClassifierShape("lstm", n_classes=2, vocab_size=8000, embed=128, hidden=128))
    1156354
    >>> classifier_param_count(ClassifierShape("mlp", n_classes=10, n_features=64, hidden=256, layers=2))
    85002
    """
    k = shape.n_classes
    if shape.kind == "lstm":
        lstm = sum(4 * h * (n + h) + 8 * h for n, h in shape.lstm_layers())
        return shape.vocab_size * shape.embed + lstm + shape.hidden * k + k
    if shape.kind == "mlp":
        return sum(a * b + b for a, b in shape.mlp_layers())
    return (shape.vocab_size + shape.buckets) * shape.embed + shape.embed * k + k


def classifier_forward_flops(shape: ClassifierShape, tokens: float, examples: float) -> float:
    """Forward FLOPs over ``examples`` texts of ``tokens`` real tokens in all (MLP: feature rows; tokens unused).

    Matrix products only, 2 FLOPs per multiply-add (the convention of :func:`forward_flops_per_token`): an
    LSTM layer costs 2 x 4h(n + h) per token it runs (hwlm's runs the padded batch; MFU counts real tokens),
    the head 2hK per example;
    an MLP 2 x its weights per example; the bag of words one add per embedding element it averages
    (``tokens`` there counts features: tokens and bigrams) and 2EK per example for its head.

    >>> classifier_forward_flops(ClassifierShape("lstm", 2, 8000, 128, 128), tokens=1, examples=0)
    262144.0
    """
    k = shape.n_classes
    if shape.kind == "lstm":
        per_token = sum(2 * 4 * h * (n + h) for n, h in shape.lstm_layers())
        return float(per_token * tokens + 2 * shape.hidden * k * examples)
    if shape.kind == "mlp":
        return float(2 * sum(a * b for a, b in shape.mlp_layers()) * examples)
    return float(shape.embed * tokens + 2 * shape.embed * k * examples)


def classifier_train_flops(shape: ClassifierShape, tokens: float, examples: float) -> float:
    """Training FLOPs: forward + backward (twice the forward), as :func:`train_flops_per_token`."""
    return 3.0 * classifier_forward_flops(shape, tokens, examples)


def classifier_activation_bytes(shape: ClassifierShape, tokens: float, examples: float) -> float:
    """Bytes (fp32) autograd keeps for one batch of ``examples`` texts holding ``tokens`` real tokens.

    LSTM, per token and layer: the layer's input (n), the four gate activations (4h), the cell state and its
    tanh (2h) and the output (h), as PyTorch's LSTM cell saves them for its backward; the head's input per
    example. MLP per example: each Linear's input and each ReLU's output. Bag of words: the embedding rows it
    gathered (E per feature) and the mean (E per example).
    """
    fp32 = 4.0
    if shape.kind == "lstm":
        per_token = sum(n + 7 * h for n, h in shape.lstm_layers())
        return fp32 * (per_token * tokens + shape.hidden * examples)
    if shape.kind == "mlp":
        return fp32 * examples * (shape.n_features + 2 * shape.hidden * shape.layers)
    return fp32 * shape.embed * (tokens + examples)
