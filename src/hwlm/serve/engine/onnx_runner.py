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
    one torch slot cache: every ONNX call writes its new positions' k/v back into the slot, so a torch
    step can always continue from it. The ONNX call's own past is its previous ``present`` (fp32, kept
    for the one slot it last ran) while the same sequence stays alone, so consecutive lone steps cost
    what ``--backend onnx`` costs; only when that slot has been stepped by torch since (or another slot
    runs alone) is the past rebuilt from the slot cache (a copy and a cast: 1-2 ms a step on ``mid``,
    which is what every lone step paid before). The logits of a lone row are
    onnxruntime's (within 1e-4 of torch's), so with this back end a lone greedy request equals
    ``hwlm generate --backend onnx`` rather than the torch path; ``--backend torch`` keeps that equality.
    """

    def __init__(self, runner: Any, model: Any, single_in_onnx: bool = True) -> None:
        self.torch, self.onnx, self.single_in_onnx = runner, model, single_in_onnx
        self.device, self.dtype, self.context = runner.device, runner.dtype, runner.context
        self.num_slots, self.vocab_size = runner.num_slots, runner.vocab_size
        # (slot, length, present) of the last ONNX call: the past of that slot's next lone step, unless
        # a torch step has written the slot since (it is dropped then; the slot cache is the truth).
        self.kept: tuple[int, int, list[np.ndarray]] | None = None

    @property
    def cache_bytes(self) -> int:
        return self.torch.cache_bytes

    def prefill(self, tokens: list[int], slot: int, start_pos: int) -> torch.Tensor:
        return self.step([(tokens, slot, start_pos)])[0]

    def decode(self, tokens: list[int], slots: list[int], positions: list[int]) -> torch.Tensor:
        return self.step([([t], s, p) for t, s, p in zip(tokens, slots, positions)])

    def step(self, rows: list[tuple[list[int], int, int]]) -> torch.Tensor:
        if len(rows) != 1 or not self.single_in_onnx:
            if self.kept is not None and any(slot == self.kept[0] for _, slot, _ in rows):
                self.kept = None  # torch writes this slot now: its kept present falls behind
            return self.torch.step(rows)
        tokens, slot, start = rows[0]
        logits, present = self.onnx.run(np.array([tokens], dtype=np.int64), self._past(slot, start))
        end, cache = start + len(tokens), self.torch.cache
        for layer, (k, v) in enumerate(zip(cache.k, cache.v)):  # (S, K, max_len, D) each
            k[slot, :, start:end] = torch.from_numpy(present[2 * layer][0, :, start:end])
            v[slot, :, start:end] = torch.from_numpy(present[2 * layer + 1][0, :, start:end])
        self.kept = (slot, end, present)
        return torch.from_numpy(logits[:, -1].copy())  # (1, V)

    def _past(self, slot: int, start: int) -> list[np.ndarray]:
        """The ONNX past (k0, v0, k1, ...) of ``slot``'s first ``start`` positions."""
        if start == 0:
            return self.onnx.empty_past(1)
        if self.kept is not None and self.kept[:2] == (slot, start):
            return self.kept[2]  # this sequence's last call was ONNX too: its present, as is
        cache, past = self.torch.cache, []
        for k, v in zip(cache.k, cache.v):
            past += [k[slot:slot + 1, :, :start].float().contiguous().numpy(),
                     v[slot:slot + 1, :, :start].float().contiguous().numpy()]
        return past


def single_row_faster_in_onnx(runner: Any, model: Any, torch_threads: int = 0, steps: int = 16) -> bool:
    """Time one-row decode steps from position 16 in torch and in onnxruntime (through the slot cache).

    Torch prefills slot 0 and onnxruntime slot 1 with 16 tokens; then each decodes ``steps`` tokens, one
    step each as a lone stream would, taking turns, so that a burst of other work on the machine lands
    on both alike (timed one after the other, the choice followed the load: two servers started a
    minute apart on a loaded machine chose differently). The medians after the first step (a warm-up)
    are compared. ``torch_threads`` (0: as set) are torch's threads for its steps, the engine's for a lone
    row; onnxruntime's session keeps its own."""
    import time

    hybrid = HybridRunner(runner, model)
    threads = torch.get_num_threads()
    lone = torch_threads or threads

    def torch_step(rows: list) -> torch.Tensor:
        torch.set_num_threads(lone)
        try:
            return runner.step(rows)
        finally:
            torch.set_num_threads(threads)

    runs = (("torch", torch_step, 0), ("onnx", hybrid.step, 1))
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    with torch.inference_mode():
        for _, run, slot in runs:
            run([([0] * 16, slot, 0)])
        for pos in range(16, 16 + steps):
            for name, run, slot in runs:
                t = time.perf_counter()
                run([([1], slot, pos)])
                times[name].append(time.perf_counter() - t)
    best = {name: sorted(ts[1:])[len(ts[1:]) // 2] for name, ts in times.items()}  # the first call warms up
    return best["onnx"] < best["torch"]
