"""``OnnxRunner``: the engine's model side over onnxruntime (``hwlm serve --backend onnx``).

The exported graph (``hwlm.export.onnx``) takes the past as plain tensors ``(B, K, P, D)`` per layer
and returns the present ``(B, K, P + T, D)``, with every row at the same position (no position ids,
no attention mask). A slot KV cache with rows at different positions does not map onto that, so
each slot keeps its own past (the present of its last call, a view, no copy) and one engine step
runs one ``session.run`` per group of rows that share (past length, token count): rows that line
up (prompts of one length, sequences admitted together) decode as a batch, their pasts concatenated
for the call. The costs, against the torch runner's one packed forward: rows at different positions
are separate calls (32 clients at 32 lengths are 32 batch-1 runs, each reading all the weights),
a group's pasts are copied to concatenate them, and the graph copies past into present on every
call (O(P) per token). The logits are the same numbers as ``OnnxModel.generate``'s, so a lone
greedy request equals the torch fp32 engine (tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["OnnxRunner"]


class OnnxRunner:
    """``ModelRunner``'s interface (``step``, ``prefill``, ``decode``) over an :class:`OnnxModel`."""

    def __init__(self, model: Any, num_slots: int) -> None:
        self.model, self.cfg = model, model.cfg
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.num_slots, self.context, self.vocab_size = num_slots, model.cfg.block_size, model.cfg.vocab_size
        self.past: list[list[np.ndarray]] = [model.empty_past(1) for _ in range(num_slots)]

    @property
    def cache_bytes(self) -> int:
        """What the slots would hold at full context (the pasts grow as they fill)."""
        c = self.cfg
        return self.num_slots * 2 * c.n_layer * c.n_kv_head * c.block_size * c.head_dim * 4

    def prefill(self, tokens: list[int], slot: int, start_pos: int) -> torch.Tensor:
        return self.step([(tokens, slot, start_pos)])[0]

    def decode(self, tokens: list[int], slots: list[int], positions: list[int]) -> torch.Tensor:
        return self.step([([t], s, p) for t, s, p in zip(tokens, slots, positions)])

    def step(self, rows: list[tuple[list[int], int, int]]) -> torch.Tensor:
        """Logits (R, V) of each row's last token; each row's slot past grows by its tokens."""
        groups: dict[tuple[int, int], list[int]] = {}
        for r, (tokens, _, start) in enumerate(rows):
            groups.setdefault((start, len(tokens)), []).append(r)
        out = np.empty((len(rows), self.vocab_size), dtype=np.float32)
        for (start, _), members in groups.items():
            slots = [rows[r][1] for r in members]
            if start == 0:
                past = self.model.empty_past(len(members))
            else:
                for s in slots:  # a slot's past is exactly its sequence's cached positions
                    assert self.past[s][0].shape[2] == start, (s, self.past[s][0].shape, start)
                past = (self.past[slots[0]] if len(slots) == 1 else
                        [np.concatenate([self.past[s][j] for s in slots]) for j in range(len(self.past[0]))])
            ids = np.array([rows[r][0] for r in members], dtype=np.int64)  # (G, T)
            logits, present = self.model.run(ids, past)
            for g, (r, s) in enumerate(zip(members, slots)):
                out[r] = logits[g, -1]
                self.past[s] = [p[g:g + 1] for p in present]  # views of this call's present
        return torch.from_numpy(out)
