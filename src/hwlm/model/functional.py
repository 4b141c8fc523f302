"""The Transformer's forward pass with the key/value past as plain tensors in and out.

``forward_past(model, idx, past) -> (logits, present)`` computes what ``Transformer.forward`` does
for tokens ``idx`` (B, T) that follow ``P`` cached positions, where ``past[i]`` is layer i's
``(key, value)``, each (B, K, P, D), and ``present[i]`` the same with the new ``T`` positions appended
(B, K, P + T, D). Nothing is written in place and no shape depends on a value, which is what two users
need:

* the ONNX export (``hwlm.export.onnx``) traces it with the past as graph inputs and the present as
  outputs, in Hugging Face Optimum's layout (``past_key_values.{i}.key`` -> ``present.{i}.key``);
* tensor-parallel decoding (``hwlm.model.tp``) runs it on a rank's slice of the heads and MLP columns
  (:class:`LayerWeights` holds the slice) with ``reduce`` (an all-reduce) summing the partial outputs
  of the two row-parallel projections before their bias is added (Shoeybi et al. 2019, Megatron-LM).

The maths are the model's (the same modules for embeddings and norms, the same fused q/k/v and
gate/up matrices); logits equal ``Transformer.forward`` to float round-off (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hwlm.model.transformer import Transformer, apply_rope, mlp_activation

__all__ = ["LayerWeights", "layer_weights", "forward_past", "empty_past"]

Past = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LayerWeights:
    """One block's weights as ``forward_past`` reads them: all of them, or one tensor-parallel rank's slice.

    ``qkv_w`` holds ``n_head`` query heads, then ``n_kv_head`` key heads, then as many value heads
    (rows of the fused projection); ``fc_w`` the MLP's first matrix (gate rows then up rows when
    ``gated``). The norms are the model's own modules (replicated on every rank).
    """

    ln_1: nn.Module
    ln_2: nn.Module
    n_head: int
    n_kv_head: int
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    proj_w: torch.Tensor
    proj_b: torch.Tensor | None
    fc_w: torch.Tensor
    fc_b: torch.Tensor | None
    mlp_proj_w: torch.Tensor
    mlp_proj_b: torch.Tensor | None
    gated: bool


def layer_weights(model: Transformer) -> list[LayerWeights]:
    """Every block's full weights (the one-process case), as views of the model's parameters."""
    cfg = model.cfg
    return [LayerWeights(b.ln_1, b.ln_2, cfg.n_head, cfg.n_kv_head, b.attn.c_attn.weight, b.attn.c_attn.bias,
                         b.attn.c_proj.weight, b.attn.c_proj.bias, b.mlp.c_fc.weight, b.mlp.c_fc.bias,
                         b.mlp.c_proj.weight, b.mlp.c_proj.bias, b.mlp.gated) for b in model.h]


def empty_past(model: Transformer, batch_size: int, n_kv_head: int | None = None) -> Past:
    """A zero-length past (B, K, 0, D) per layer: what the first call (the prompt) takes."""
    cfg, p = model.cfg, next(model.parameters())
    shape = (batch_size, n_kv_head or cfg.n_kv_head, 0, cfg.head_dim)
    return [(p.new_zeros(shape), p.new_zeros(shape)) for _ in range(cfg.n_layer)]


def _row_parallel(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                  reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """``x @ w.T + b`` where ``w`` may be one rank's column slice: sum the partial products, then add b once."""
    if reduce is None:
        return F.linear(x, w, b)
    y = reduce(F.linear(x, w))
    return y if b is None else y + b


def _attention(x: torch.Tensor, lw: LayerWeights, rope: tuple[torch.Tensor, torch.Tensor] | None,
               past: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    B, T, _ = x.shape
    H, K = lw.n_head, lw.n_kv_head
    D = lw.qkv_w.size(0) // (H + 2 * K)
    q, k, v = F.linear(x, lw.qkv_w, lw.qkv_b).split((H * D, K * D, K * D), dim=2)
    q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k = k.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
    v = v.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    k = torch.cat((past[0], k), dim=2)  # (B, K, P + T, D)
    v = torch.cat((past[1], v), dim=2)
    # Query t (at position P + t) sees keys 0 .. P + t: a causal triangle shifted right by P.
    keys = torch.arange(k.size(2), device=x.device)
    mask = keys.view(1, -1) <= positions.view(-1, 1)  # (T, P + T)
    kk, vv = k, v
    if K != H:  # grouped-query: query head h reads key/value head h // (H / K), as SDPA's enable_gqa
        kk, vv = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
    y = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)  # (B, H, T, D)
    y = y.transpose(1, 2).reshape(B, T, H * D)
    return _row_parallel(y, lw.proj_w, lw.proj_b, reduce), (k, v)


def _mlp(x: torch.Tensor, lw: LayerWeights, reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    h = mlp_activation(F.linear(x, lw.fc_w, lw.fc_b), lw.gated)
    return _row_parallel(h, lw.mlp_proj_w, lw.mlp_proj_b, reduce)


def forward_past(model: Transformer, idx: torch.Tensor, past: Past, layers: list[LayerWeights] | None = None,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, Past]:
    """Logits (B, T, V) of ``idx`` (B, T) after ``past`` (per layer (B, K, P, D) keys and values), and the present.

    ``layers`` defaults to the model's full weights; a tensor-parallel rank passes its slice and an
    all-reduce as ``reduce``. The caller keeps P + T within ``block_size``.
    """
    layers = layer_weights(model) if layers is None else layers
    B, T = idx.shape
    P = past[0][0].size(2)
    positions = torch.arange(T, device=idx.device) + P  # (T,)
    x = model.wte(idx)  # (B, T, C)
    rope = None
    if model.wpe is not None:
        x = x + model.wpe(positions)
    else:
        rope = (model.rope_cos[positions], model.rope_sin[positions])  # (T, D) each
    present: Past = []
    for lw, kv in zip(layers, past):
        a, new_kv = _attention(lw.ln_1(x), lw, rope, kv, positions, reduce)
        x = x + a
        x = x + _mlp(lw.ln_2(x), lw, reduce)
        present.append(new_kv)
    return model.lm_head(model.ln_f(x)), present
