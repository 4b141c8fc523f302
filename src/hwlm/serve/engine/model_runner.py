"""The model side of the engine: a slot KV cache and the two kinds of step, prefill and batched decode.

The cache is preallocated once per layer as ``(S, K, max_len, D)`` for ``S`` slots (one
:class:`hwlm.model.KVCache` of batch ``S``); a running sequence owns one slot for its lifetime.

* **Prefill** runs one sequence's prompt chunk through ``Transformer.forward`` on a one-slot view
  of the cache (``start_pos`` = tokens already cached, so a long prompt is prefilled in chunks
  with the model's own bottom-right causal mask).
* **Decode** feeds one token for each of B running sequences at once, each at its own position:
  the model's weights and modules with per-row positions (learned or rotary), k/v written at
  ``(slot, position)`` for each row, and attention over each slot's valid prefix through a boolean
  mask in ``scaled_dot_product_attention``. A batch of one takes ``Transformer.decode_step``, the
  path ``hwlm generate`` uses, so a lone request gives exactly ``hwlm generate``'s numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hwlm.model import KVCache, Transformer
from hwlm.model.transformer import apply_rope

__all__ = ["ModelRunner"]


class ModelRunner:
    """Owns the model and the slot cache; only the engine thread calls it."""

    def __init__(self, model: Transformer, num_slots: int) -> None:
        self.model, self.cfg = model, model.cfg
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.num_slots, self.max_len = num_slots, self.cfg.block_size
        with torch.inference_mode():
            self.cache = KVCache(self.cfg, batch_size=num_slots, device=self.device, dtype=self.dtype)
            self.state = model.decode_state()  # for decode_step at batch 1, built once
        self.views = [self._slot_view(s) for s in range(num_slots)]

    def _slot_view(self, slot: int) -> KVCache:
        """A batch-1 KVCache whose buffers are views of slot ``slot``: writes land in the slot cache."""
        view = KVCache.__new__(KVCache)
        view.max_len, view.batch_size = self.max_len, 1
        view.kv = [kv.narrow(1, slot, 1) for kv in self.cache.kv]  # (2, 1, K, max_len, D) each
        view.k = [kv[0] for kv in view.kv]
        view.v = [kv[1] for kv in view.kv]
        return view

    @property
    def cache_bytes(self) -> int:
        return sum(kv.numel() * kv.element_size() for kv in self.cache.kv)

    @torch.inference_mode()
    def prefill(self, tokens: list[int], slot: int, start_pos: int) -> torch.Tensor:
        """Write ``tokens`` into ``slot`` from ``start_pos``; logits (V,) of the last one."""
        idx = torch.tensor([tokens], device=self.device)
        logits, _ = self.model(idx, cache=self.views[slot], start_pos=start_pos, last_only=True)
        return logits[0, -1]

    @torch.inference_mode()
    def decode(self, tokens: list[int], slots: list[int], positions: list[int]) -> torch.Tensor:
        """Logits (B, V) for one new token per row, row b at ``positions[b]`` of ``slots[b]``."""
        if len(tokens) == 1:
            return self.model.decode_step(tokens[0], self.views[slots[0]], positions[0], self.state).view(1, -1)
        return self._decode_batch(torch.tensor(tokens, device=self.device),
                                  torch.tensor(slots, device=self.device),
                                  torch.tensor(positions, device=self.device), slots)

    def _decode_batch(self, tokens: torch.Tensor, slots: torch.Tensor, pos: torch.Tensor,
                      slot_list: list[int]) -> torch.Tensor:
        m, cfg = self.model, self.cfg
        B, H, K, D = tokens.size(0), cfg.n_head, cfg.n_kv_head, cfg.head_dim
        x = m.wte(tokens)  # (B, C)
        rope = None
        if m.wpe is not None:
            x = x + m.wpe(pos)  # each row its own learned position
        else:
            rope = (m.rope_cos[pos].view(B, 1, D), m.rope_sin[pos].view(B, 1, D))  # (B, 1, D)
        L = int(pos.max()) + 1
        # Row b sees keys [0, pos[b]]: the rest of the window is other tokens' stale k/v or zeros.
        mask = (torch.arange(L, device=self.device).view(1, L) <= pos.view(B, 1)).view(B, 1, 1, L)
        # The engine hands out the lowest free slots, so a batch usually is a run of slots: a view, no copy.
        first = slot_list[0]
        contiguous = slot_list == list(range(first, first + B))
        for layer, block in enumerate(m.h):
            attn = block.attn
            qkv = attn.c_attn(block.ln_1(x)).view(B, H + 2 * K, D)
            q, k, v = qkv[:, :H], qkv[:, H:H + K], qkv[:, H + K:]  # (B, H, D), (B, K, D), (B, K, D)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            ck, cv = self.cache.k[layer], self.cache.v[layer]  # (S, K, max_len, D)
            ck[slots, :, pos] = k  # row b's k at (slots[b], :, pos[b])
            cv[slots, :, pos] = v
            if contiguous:
                keys, values = ck[first:first + B, :, :L], cv[first:first + B, :, :L]
            else:
                keys, values = ck[:, :, :L].index_select(0, slots), cv[:, :, :L].index_select(0, slots)
            y = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask,
                                               enable_gqa=K != H)  # (B, H, 1, D)
            x = x + attn.c_proj(y.reshape(B, H * D))
            x = x + block.mlp(block.ln_2(x))
        return m.lm_head(m.ln_f(x))  # (B, V)
