"""The decoder-only Transformer of hwlm, in one file (nanoGPT style).

One module serves both flavours of :class:`~hwlm.model.config.ModelConfig`:

* ``gpt2``: LayerNorm, learned positions, GELU with the tanh approximation (what Hugging Face
  calls ``gelu_new``), biases. Same maths as ``transformers.GPT2LMHeadModel``.
* ``llama``: RMSNorm, rotary positions in the *half-split* convention (``rotate_half``, as
  ``transformers.LlamaForCausalLM``), SwiGLU, grouped-query attention, no biases.

So that an export to Hugging Face is a renaming and a transpose, never a permutation.

Speed choices (measured in ``benchmarks/train_speed.py`` and ``generate_speed.py``): one fused
q/k/v projection and one fused gate/up projection (fewer, larger matmuls);
``scaled_dot_product_attention`` with ``is_causal`` (no mask tensor; faster on a CPU than
matmul + softmax at these sizes); ``F.gelu(approximate="tanh")`` as one kernel instead of the
six-op formula (a hand-fused autograd Function in eager ops measured slower still: each extra
pass over the (B, T, d_ff) tensor costs more than the kernel's slow tanh); the output layer and
loss fused in chunks (``LinearCrossEntropy``); gemv for single-row decoding (``linear``), or for CPU
inference oneDNN on weights packed once (``hwlm.model.packing``, at any row count); no
dropout calls at all when ``dropout == 0``. Batch-1 decoding without a gradient takes a flat path
(``decode_step``): no module calls, fixed views of a reused q/k/v buffer, k and v stored with one
copy, the same kernels in the same order as the general path (equal numbers, tested). Nothing
branches on tensor values, so ``torch.compile(model, fullgraph=True)`` traces a training step in
one graph (tested).

Shapes in comments: B batch, T tokens, C = n_embd, H query heads, K key/value heads,
D head size, V vocabulary, L cached length.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hwlm.formulas import loss_chunk_rows
from hwlm.model.config import ModelConfig
from hwlm.model.packing import packed_weight

__all__ = ["Transformer", "KVCache"]


class KVCache:
    """Preallocated keys and values for every layer: ``k[layer]`` is (B, K, max_len, D).

    ``k[layer]`` and ``v[layer]`` are ``kv[layer][0]`` and ``kv[layer][1]`` of one (2, B, K, max_len, D) buffer.

    Generation writes the new positions in place (``update``) and attends to the prefix
    ``[:start_pos + T]``, so decoding allocates nothing per token.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.max_len = max_len or cfg.block_size
        self.batch_size = batch_size
        shape = (2, batch_size, cfg.n_kv_head, self.max_len, cfg.head_dim)
        # k and v of a layer share one buffer (kv[layer][0] and [1]), so a batch-1 decoding step
        # stores both with one copy_ (``Transformer._decode_step``).
        self.kv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.k = [kv[0] for kv in self.kv]
        self.v = [kv[1] for kv in self.kv]

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, K, T, D) at ``start_pos`` and return views of the whole prefix (B, K, L, D)."""
        end = start_pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked to write up to {end}")
        # narrow + copy_ rather than slice assignment: the same copy with fewer dispatched ops,
        # which is what a decoding step costs at batch 1.
        ck, cv = self.k[layer], self.v[layer]
        ck.narrow(2, start_pos, k.size(2)).copy_(k)
        cv.narrow(2, start_pos, v.size(2)).copy_(v)
        return ck.narrow(2, 0, end), cv.narrow(2, 0, end)


class FusedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy whose gradient is computed in the forward pass, from one softmax.

    ``F.cross_entropy`` makes about seven passes over the (N, V) logits in training
    (log_softmax, a zero-filled gradient, a scatter, log_softmax's backward with a second exp).
    Here the forward makes one exp pass, turns it into ``softmax - onehot`` in place and keeps
    that as the gradient (the same trick as llm.c's fused classifier). Rows whose target is
    -1 are ignored. Used only when a gradient is needed; it equals ``F.cross_entropy`` (tested).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (N, V), (N,)
        ctx.dtype = logits.dtype
        logits = logits.detach()
        if logits.element_size() < 4:
            logits = logits.float()  # bf16 / fp16 logits (autocast) are reduced in float32
        valid = targets != -1
        n = valid.sum().clamp(min=1)
        grad = logits.clone()
        loss = _softmax_grad_(grad, targets, valid, n)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss).to(ctx.dtype), None


def _softmax_grad_(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Turn logits (N, V) into d(sum of losses / n)/d logits in place; return that loss sum / n."""
    safe = targets.clamp(min=0).unsqueeze(1)  # (N, 1)
    picked = logits.gather(1, safe)  # (N, 1) logit of the target
    row_max = logits.amax(dim=1, keepdim=True)  # (N, 1)
    total = logits.sub_(row_max).exp_().sum(dim=1, keepdim=True)  # (N, 1); logits now exp(l - max)
    loss = ((row_max + total.log() - picked).squeeze(1) * valid).sum() / n  # log-sum-exp - target logit
    # (softmax - onehot(target)) / n. Ignored rows get the scale 0 instead of a branch on the data
    # (``if not valid.all()``), which torch.compile would have to break its graph for; the
    # per-row scale costs nothing extra: it replaces the division by the row sum.
    keep = valid.unsqueeze(1).to(logits.dtype) / n  # (N, 1): 1/n, or 0 on ignored rows
    logits.mul_(keep / total).scatter_add_(1, safe, -keep)
    return loss


class LinearCrossEntropy(torch.autograd.Function):
    """Output layer and mean cross-entropy in one pass over row chunks, never holding (N, V) logits.

    Each chunk of rows gets its logits in one reused buffer, turned in place into the gradient
    (``_softmax_grad_``), which is immediately multiplied back into the input and weight
    gradients. On a CPU a chunk is a few MiB, so the softmax passes run from cache,
    and no large buffer is allocated per step (fresh large allocations cost page faults: see
    benchmarks/train_speed.py). Same matmul FLOPs as the unfused layer.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # x (N, C), weight (V, C), targets (N,)
        x, weight = x.detach(), weight.detach()
        N, V = x.size(0), weight.size(0)
        rows = loss_chunk_rows(V, x.device.type)
        valid = targets != -1
        n = valid.sum().clamp(min=1)
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        if torch.compiler.is_compiling():
            # Traced by torch.compile: the same chunks without ``out=`` into views of preallocated buffers
            # (inductor allocates for itself). On CUDA those ``out=`` writes came back as a wrong weight
            # gradient under compile (every entry of a tied embedding's, H200, torch 2.11; CPU was exact).
            grads_x, grad_w = [], None
            for s in range(0, N, rows):
                logits = torch.mm(x[s:s + rows], weight.t())
                loss = loss + _softmax_grad_(logits, targets[s:s + rows], valid[s:s + rows], n)
                grads_x.append(torch.mm(logits, weight))
                part = torch.mm(logits.t(), x[s:s + rows])
                grad_w = part if grad_w is None else grad_w + part
            ctx.save_for_backward(torch.cat(grads_x), grad_w)
            return loss
        grad_x, grad_w = torch.empty_like(x), torch.empty_like(weight)
        buf = torch.empty(min(rows, N), V, dtype=x.dtype, device=x.device)
        for s in range(0, N, rows):
            e = min(s + rows, N)
            logits = torch.mm(x[s:e], weight.t(), out=buf[:e - s])  # (rows, V)
            loss += _softmax_grad_(logits, targets[s:e], valid[s:e], n)
            torch.mm(logits, weight, out=grad_x[s:e])  # (rows, C)
            if s == 0:
                torch.mm(logits.t(), x[s:e], out=grad_w)  # (V, C); no zero-fill pass
            else:
                grad_w.addmm_(logits.t(), x[s:e])
        ctx.save_for_backward(grad_x, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None


def chunked_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T`` against ``targets`` (-1 ignored), without a gradient, in the row
    chunks of :class:`LinearCrossEntropy`: evaluation never holds the (N, V) logits either."""
    rows, total = loss_chunk_rows(weight.size(0), x.device.type), torch.zeros((), dtype=torch.float32,
                                                                              device=x.device)
    for s in range(0, x.size(0), rows):
        logits = torch.mm(x[s:s + rows], weight.t())
        total += F.cross_entropy(logits.float(), targets[s:s + rows], ignore_index=-1, reduction="sum")
    return total / (targets != -1).sum().clamp(min=1)


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)``, except on packed weights (CPU inference) and for a single row (matrix-vector kernels).

    Without a gradient, a layer packed by :func:`hwlm.model.packing.pack_linears` runs oneDNN on its
    packed weight, at any row count (2-3x MKL's gemv and sgemm at 1-8 rows on the EPYC; see there).

    With one row, gemm (``F.linear``) was measured 1.2-1.6x slower than gemv (``addmv``) on one
    core (gpt2-124m's q/k/v: 474 vs 301 us): decoding is bound by reading the weights, and gemv
    streams them at memory speed. Every other shape, training included, is ``layer(x)`` unchanged,
    and so is autocast, which casts for ``linear`` but not for ``addmv``, and so is a weight held in a
    tensor subclass (torchao's quantized weights implement ``linear``, not ``mv``).
    """
    if x.dtype != layer.weight.dtype or torch.is_autocast_enabled(x.device.type):
        return layer(x)
    if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        packed = packed_weight(layer)
        if packed is not None:  # CPU inference on weights packed once for oneDNN (hwlm.model.packing)
            return torch.ops.mkldnn._linear_pointwise(x, packed, layer.bias, "none", [], "")
    if x.numel() != x.size(-1) or type(layer.weight) not in (nn.Parameter, torch.Tensor):
        return layer(x)
    row = x.reshape(-1)
    y = torch.mv(layer.weight, row) if layer.bias is None else torch.addmv(layer.bias, layer.weight, row)
    return y.view(*x.shape[:-1], -1)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (max_len, D) for rotary positions, half-split as in HF Llama (RoFormer, Su et al. 2021)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (D/2,)
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (max_len, D): the same angle for i and i + D/2
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by cos/sin (T, D): pairs are (i, i + D/2), not neighbours."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_size, self.kv_size = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        # One matmul for q, k and v: rows [0, q_size) are q, then k, then v.
        self.c_attn = nn.Linear(cfg.n_embd, self.q_size + 2 * self.kv_size, bias=cfg.bias)
        self.c_proj = nn.Linear(self.q_size, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.rope = cfg.flavour == "llama"

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None, layer: int, start_pos: int) -> torch.Tensor:
        B, T, _ = x.shape
        H, K = self.n_head, self.n_kv_head
        if T == 1:
            # Decoding: (B, 1, (H+2K)*D) already is (B, H+2K, 1, D) in memory; 3 slices instead of 7 ops.
            qkv = linear(x, self.c_attn).view(B, H + 2 * K, 1, self.head_dim)
            q, k, v = qkv[:, :H], qkv[:, H:H + K], qkv[:, H + K:]
        else:
            q, k, v = linear(x, self.c_attn).split((self.q_size, self.kv_size, self.kv_size), dim=2)
            q = q.view(B, T, H, self.head_dim).transpose(1, 2)  # (B, H, T, D)
            k = k.view(B, T, K, self.head_dim).transpose(1, 2)  # (B, K, T, D)
            v = v.view(B, T, K, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask, causal = None, T > 1
        if cache is not None:
            k, v = cache.update(layer, start_pos, k, v)  # (B, K, L, D), L = start_pos + T
            if start_pos > 0 and T > 1:
                # Chunked prefill: SDPA's is_causal aligns the triangle top-left, we need it
                # bottom-right (query t sees keys up to start_pos + t).
                L = start_pos + T
                mask = torch.ones(T, L, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)
                causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=K != H,
            dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.q_size)  # (B, T, H*D)
        y = linear(y, self.c_proj)  # (B, T, C)
        if self.dropout and self.training:
            y = F.dropout(y, self.dropout, training=True)
        return y


def mlp_activation(h: torch.Tensor, gated: bool) -> torch.Tensor:
    """The MLP's activation between its two linears: SwiGLU (Shazeer 2020) on ``[gate, up]`` halves, or GPT-2's
    tanh gelu (``gelu_new``). One rule for the module, the row-parallel decode, TP decoding and serve's packed step."""
    if gated:
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(h, approximate="tanh")


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.flavour == "llama"
        # SwiGLU fuses gate and up projections into one matmul: rows [0, d_ff) gate, then up.
        self.c_fc = nn.Linear(cfg.n_embd, (2 if self.gated else 1) * cfg.d_ff, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = mlp_activation(linear(x, self.c_fc), self.gated)  # (B, T, d_ff)
        y = linear(h, self.c_proj)  # (B, T, C)
        if self.dropout and self.training:
            y = F.dropout(y, self.dropout, training=True)
        return y


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.flavour == "gpt2":
        return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=bool(cfg.bias))
    return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.ln_1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None, start_pos: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, self.layer, start_pos)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Decoder-only language model. ``forward(idx, targets, cache, start_pos) -> (logits, loss)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.flavour == "gpt2" else None
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.recompute = "none"  # none | selective | full while training: see hwlm.model.recompute
        if cfg.tie_embeddings:
            # One Parameter under two names; safetensors' save_model/load_model keep one copy.
            self.lm_head.weight = self.wte.weight
        if cfg.flavour == "llama":
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta)
            # Not persistent: recomputed from the config, never saved with the weights.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: normal(0, 0.02); residual output projections scaled by 1/sqrt(2 n_layer)."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() < 2:
                # Norm gains start at 1, biases at 0.
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("c_proj.weight"):
                # Each block adds two outputs to the residual stream (Radford et al. 2019, sec. 2.3).
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def num_params(self) -> int:
        """Parameters counted once each (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                start_pos: int = 0, *, last_only: bool = False, return_logits: bool = True
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, V) for tokens ``idx`` (B, T) at positions ``start_pos ...``.

        ``targets`` (B, T), -1 = ignore, gives the mean cross-entropy loss. With ``cache``
        the new keys/values are stored at ``start_pos`` and attention sees the whole prefix.
        ``last_only`` computes logits for the last position only (B, 1, V): what generation needs.
        ``return_logits=False`` with ``targets`` returns ``(None, loss)``; while training (a gradient
        is needed, no autocast) the output layer and loss then run fused in chunks
        (``LinearCrossEntropy``): faster and without the (B, T, V) logits in memory; without a gradient
        (evaluation) the loss runs in the same row chunks (``chunked_cross_entropy``).
        """
        B, T = idx.shape
        if start_pos + T > self.cfg.block_size:
            raise ValueError(f"positions up to {start_pos + T} exceed block_size {self.cfg.block_size}")
        if (T == 1 and B == 1 and cache is not None and targets is None and not self.training
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled(idx.device.type)
                and cache.batch_size == 1 and start_pos < cache.max_len):
            return self.decode_step(idx, cache, start_pos).view(1, 1, -1), None
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe.weight[start_pos:start_pos + T]  # (T, C) broadcast over B
        else:
            rope = (self.rope_cos[start_pos:start_pos + T], self.rope_sin[start_pos:start_pos + T])  # (T, D)
        if self.cfg.dropout and self.training:
            x = F.dropout(x, self.cfg.dropout, training=True)
        recompute = self.recompute != "none" and self.training and torch.is_grad_enabled() and cache is None
        for block in self.h:
            if recompute:
                from hwlm.model.recompute import run_block

                x = run_block(block, x, rope, start_pos, self.recompute)
            else:
                x = block(x, rope, cache, start_pos)
        x = self.ln_f(x)
        if targets is None:
            logits = linear(x[:, -1:] if last_only else x, self.lm_head)  # (B, T or 1, V)
            return logits, None
        fused = (not return_logits and torch.is_grad_enabled() and self.lm_head.weight.requires_grad
                 and not torch.is_autocast_enabled(x.device.type))
        if fused:
            loss = LinearCrossEntropy.apply(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(B * T))
            return None, loss
        if (not return_logits and not torch.is_grad_enabled() and type(self.lm_head) is nn.Linear
                and self.lm_head.bias is None and not torch.is_autocast_enabled(x.device.type)):
            return None, chunked_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(B * T))
        logits = self.lm_head(x)  # (B, T, V)
        flat_logits, flat_targets = logits.view(B * T, -1), targets.reshape(B * T)
        if torch.is_grad_enabled() and logits.requires_grad:
            loss = FusedCrossEntropy.apply(flat_logits, flat_targets)
        else:
            loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=-1)
        return (logits if return_logits else None), loss

    def decode_step(self, token: int | torch.Tensor, cache: KVCache, pos: int,
                    state: DecodeState | None = None) -> torch.Tensor:
        """Logits (V,) for one token id at position ``pos`` of a batch-1 ``cache``, writing its k/v there.

        ``forward``'s batch-1 decoding path (``forward(idx (1, 1), cache=..., start_pos=pos)``
        takes it without a gradient or autocast), callable directly by a generation loop with
        ``state = model.decode_state()`` built once. The same maths and kernels as the general
        path (gemv, or oneDNN on packed weights; SDPA; the same additions in the same order, so the
        same numbers), written as
        one flat loop: at batch 1 a tiny model's step costs the dispatch of its ops more than their
        arithmetic, and the general path's module calls, reshapes, transposes, q/k/v slices and
        separate k and v cache writes were half of it (benchmarks/generate_speed.py).
        """
        H, K, D = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        layers, ln_f, head = state or self.decode_state()
        if isinstance(token, int):
            x = self.wte.weight[token]  # (C,), a view of the weight: never written in place
        else:  # a (1, 1) tensor, read on its device (no host sync)
            x = self.wte.weight.index_select(0, token.view(1)).view(-1)
        if self.wpe is not None:
            x = x + self.wpe.weight[pos]
            rope = None
        else:
            rope = (self.rope_cos[pos], self.rope_sin[pos])  # (D,) each
        cast = cache.k[0].dtype != x.dtype  # bf16 weights on an fp32 cache (serve's packed bf16): attention in fp32
        for (ln_1, c_attn, q, new_kv, qk, c_proj, ln_2, c_fc, mlp_proj, gated), kv, k, v in zip(
                layers, cache.kv, cache.k, cache.v):
            # q, new_kv, qk: fixed views of this layer's reused qkv buffer (c_attn writes it), so no per-step slicing.
            c_attn(ln_1(x))
            if rope is not None:
                qk_rot = apply_rope(qk, *rope)  # (H + K, D)
                k.select(2, pos).copy_(qk_rot[H:].view(1, K, D))
                v.select(2, pos).copy_(new_kv[1])
                q = qk_rot[:H].view(1, H, 1, D)
            else:
                kv.select(3, pos).copy_(new_kv)  # k and v in one copy: (2, 1, K, D)
            L = pos + 1
            if cast:
                q = q.to(k.dtype)
            y = F.scaled_dot_product_attention(
                q, k.narrow(2, 0, L), v.narrow(2, 0, L), enable_gqa=K != H)  # (1, H, 1, D)
            if cast:
                y = y.to(x.dtype)
            x = c_proj(y.view(-1)).add_(x)  # = x + attn: the general path's sum, in a fresh tensor
            h = c_fc(ln_2(x))
            if gated:
                gate, up = h.chunk(2)
                h = F.silu(gate).mul_(up)
            else:
                h = F.gelu(h, approximate="tanh")
            x = mlp_proj(h).add_(x)
        return head(ln_f(x))

    def decode_state(self) -> DecodeState:
        """What ``decode_step`` reads per layer (weights bound as functions, a reused qkv buffer), built once.

        Holds the current parameter tensors, and the packed copies of packed layers
        (:mod:`hwlm.model.packing`) as they are now: build it again after replacing a parameter object
        or packing (in-place updates, ``load_state_dict`` and ``to()`` are seen on unpacked layers). One
        state per concurrent decoding loop (the qkv buffers are reused).
        """
        H, K, D = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        layers = []
        for b in self.h:
            w = b.attn.c_attn.weight
            qkv = torch.empty(w.size(0), dtype=w.dtype, device=w.device)
            layers.append((_vec_norm(b.ln_1), _vec_linear(b.attn.c_attn, out=qkv), qkv[:H * D].view(1, H, 1, D),
                           qkv[H * D:].view(2, 1, K, D), qkv[:(H + K) * D].view(H + K, D),
                           _vec_linear(b.attn.c_proj), _vec_norm(b.ln_2), _vec_linear(b.mlp.c_fc),
                           _vec_linear(b.mlp.c_proj), b.mlp.gated))
        return layers, _vec_norm(self.ln_f), _vec_linear(self.lm_head)


VecFn = Callable[[torch.Tensor], torch.Tensor]
DecodeState = tuple[list[tuple], VecFn, VecFn]


def _vec_linear(layer: nn.Linear, out: torch.Tensor | None = None) -> VecFn:
    """``layer`` for one vector (C,), as gemv (see ``linear``), or oneDNN on its packed weight; into ``out``."""
    w, b, packed = layer.weight, layer.bias, packed_weight(layer)
    if packed is not None:
        def run(x: torch.Tensor) -> torch.Tensor:
            y = torch.ops.mkldnn._linear_pointwise(x.view(1, -1), packed, b, "none", [], "").view(-1)
            return y if out is None else out.copy_(y)
        return run
    kw = {} if out is None else {"out": out}
    return partial(torch.mv, w, **kw) if b is None else partial(torch.addmv, b, w, **kw)


def _vec_norm(norm: nn.Module) -> VecFn:
    """``norm`` for one vector without the module call (LayerNorm or RMSNorm, as ``make_norm`` builds)."""
    if isinstance(norm, nn.LayerNorm):
        shape, w, b, eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps
        # native_layer_norm is what layer_norm calls: one dispatch less per norm, the same kernel.
        return lambda x: torch.native_layer_norm(x, shape, w, b, eps)[0]
    shape, w, eps = norm.normalized_shape, norm.weight, norm.eps
    return lambda x: torch.rms_norm(x, shape, w, eps)
