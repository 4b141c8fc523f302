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


class HybridRunner:
    """``--backend auto`` with ``--onnx``: torch's packed forward for steps of several rows, onnxruntime
    for a step of one row (a lone stream, or one new prompt while nothing else runs) where it measured
    faster at start-up (:func:`single_row_faster_in_onnx`).

    Why: a lone row is bound by reading the weights once, and there onnxruntime's MLAS gemv streams
    them several times faster than eager torch's ``mv`` (one core on the 77 MB output layer of ``mid``),
    while batches are matmul-bound and the torch packed step does them in one forward. Both work on the
    one torch slot cache: the ONNX call gets the slot's prefix as its past (a copy: the graph wants
    contiguous fp32) and its new k/v are written back into the slot. The logits of a lone row are
    onnxruntime's (within 1e-4 of torch's), so with this back end a lone greedy request equals
    ``hwlm generate --backend onnx`` rather than the torch path; ``--backend torch`` keeps that equality.
    """

    def __init__(self, runner: Any, model: Any, single_in_onnx: bool = True) -> None:
        self.torch, self.onnx, self.single_in_onnx = runner, model, single_in_onnx
        self.device, self.dtype, self.context = runner.device, runner.dtype, runner.context
        self.num_slots, self.vocab_size = runner.num_slots, runner.vocab_size

    @property
    def cache_bytes(self) -> int:
        return self.torch.cache_bytes

    def prefill(self, tokens: list[int], slot: int, start_pos: int) -> torch.Tensor:
        return self.step([(tokens, slot, start_pos)])[0]

    def decode(self, tokens: list[int], slots: list[int], positions: list[int]) -> torch.Tensor:
        return self.step([([t], s, p) for t, s, p in zip(tokens, slots, positions)])

    def step(self, rows: list[tuple[list[int], int, int]]) -> torch.Tensor:
        if len(rows) != 1 or not self.single_in_onnx:
            return self.torch.step(rows)
        tokens, slot, start = rows[0]
        cache = self.torch.cache
        past = []
        for k, v in zip(cache.k, cache.v):  # (S, K, max_len, D) each
            past += [k[slot:slot + 1, :, :start].float().contiguous().numpy(),
                     v[slot:slot + 1, :, :start].float().contiguous().numpy()]
        logits, present = self.onnx.run(np.array([tokens], dtype=np.int64), past)
        end = start + len(tokens)
        for layer, (k, v) in enumerate(zip(cache.k, cache.v)):
            k[slot:slot + 1, :, start:end] = torch.from_numpy(present[2 * layer][:, :, start:end])
            v[slot:slot + 1, :, start:end] = torch.from_numpy(present[2 * layer + 1][:, :, start:end])
        return torch.from_numpy(logits[:, -1].copy())  # (1, V)


def single_row_faster_in_onnx(runner: Any, model: Any, steps: int = 8) -> bool:
    """Time one-row decode steps at position 16 in torch and in onnxruntime (through the slot cache)."""
    import time

    hybrid = HybridRunner(runner, model)
    with torch.inference_mode():
        runner.step([([0] * 16, 0, 0)])
        best = {}
        for name, run in (("torch", runner.step), ("onnx", hybrid.step)):
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                run([([1], 0, 16)])  # rewrites position 16 each time: the cache stays as it was
                times.append(time.perf_counter() - t)
            best[name] = sorted(times[1:])[len(times[1:]) // 2]  # the first call warms up
    return best["onnx"] < best["torch"]
