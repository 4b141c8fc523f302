"""Which sequences run this step: a ``waiting`` queue, a ``running`` list and the free KV-cache slots.

Iteration-level scheduling (Orca, Yu et al. 2022; nano-vllm's scheduler): between two decode steps
waiting sequences take free slots, and their prompts are prefilled within a token budget per step
(a long prompt is split across steps, so running streams keep getting tokens while it loads).
Every running, prefilled sequence is decoded each step.
"""

from __future__ import annotations

import heapq
from collections import deque

from hwlm.serve.engine.sequence import Sequence, SeqStatus

__all__ = ["Scheduler", "QueueFull"]


class QueueFull(Exception):
    """No room: every slot is taken and the waiting queue is full (the HTTP layer answers 503)."""


class Scheduler:
    def __init__(self, num_slots: int, max_waiting: int, prefill_budget: int) -> None:
        self.num_slots, self.max_waiting, self.prefill_budget = num_slots, max_waiting, prefill_budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_slots = list(range(num_slots))  # a heap: the lowest slot first keeps batches contiguous

    def has_room(self, n: int) -> bool:
        """Could ``n`` more sequences be queued now?"""
        free = len(self.free_slots) - len(self.waiting)
        return len(self.waiting) + n <= self.max_waiting + max(0, free)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> tuple[list[tuple[Sequence, int]], list[Sequence]]:
        """(sequences to prefill with how many prompt tokens, sequences to decode) for this step."""
        decode = [s for s in self.running if s.prefilled and s.output_ids]
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            seq.slot, seq.status = heapq.heappop(self.free_slots), SeqStatus.RUNNING
            self.running.append(seq)
        self.running.sort(key=lambda s: s.slot)
        decode.sort(key=lambda s: s.slot)
        budget, prefill = self.prefill_budget, []
        for seq in self.running:
            if budget == 0:
                break
            left = len(seq.prompt_ids) - seq.num_cached
            if left > 0:
                n = min(left, budget)
                prefill.append((seq, n))
                budget -= n
        return prefill, decode

    def finish(self, seq: Sequence) -> None:
        """Take ``seq`` out (running or waiting) and give its slot back."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
            heapq.heappush(self.free_slots, seq.slot)
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SeqStatus.FINISHED
