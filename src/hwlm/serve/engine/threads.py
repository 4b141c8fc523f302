"""``LoneThreads``: how many torch threads a lone row's step runs on.

    chooser = LoneThreads(batch=1, lone=2, probe=True)
    n = chooser.pick()                 # before a lone decode step
    chooser.record(n, seconds)         # after it

A lone stream's step reads every weight for one row, so on one core that is the whole inter-token
latency, while the HTTP process beside it needs a small part of a core; on the other hand an OpenMP op
on every core waits at its barrier whenever another process preempts one of its threads, and on a
shared 2-core machine that can make the lone step slower on two threads than on one
(docs/benchmarks.md, "Where the time went"). So with ``probe`` the chooser times lone decode steps at
both counts and keeps the faster: it alternates until each count has half a window of steps, then
runs the count with the lower median of its last ``window`` steps, and every ``every`` lone steps
gives the other count ``probe_steps`` steps (a whole window: one look decides), so a change in the
machine's load is seen within ``every`` tokens, for a few percent of the lone steps on the slower count. Without ``probe`` (an explicit ``--lone-threads N``) it always answers ``lone``.
"""

from __future__ import annotations

from collections import deque
from statistics import median

__all__ = ["LoneThreads"]


class LoneThreads:
    def __init__(self, batch: int, lone: int, probe: bool = True, window: int = 4, every: int = 128,
                 probe_steps: int = 4) -> None:
        self.lone = lone
        self.counts = (lone, batch) if probe and lone != batch else (lone,)
        self.window, self.every, self.probe_steps = window, every, probe_steps
        self.times: dict[int, deque[float]] = {c: deque(maxlen=window) for c in self.counts}
        self.steps = 0  # lone decode steps recorded
        self.runs: dict[int, int] = dict.fromkeys(self.counts, 0)  # of them at each count

    def best(self) -> int:
        """The count with the lower median over its recent steps (``lone`` until both have some)."""
        if len(self.counts) == 1 or any(len(t) < self.window // 2 for t in self.times.values()):
            return self.lone
        return min(self.counts, key=lambda c: median(self.times[c]))

    def pick(self) -> int:
        if len(self.counts) == 1:
            return self.lone
        fewest = min(self.counts, key=lambda c: len(self.times[c]))
        if len(self.times[fewest]) < self.window // 2:
            return fewest  # still measuring both: take turns
        best = self.best()
        if self.steps % self.every < self.probe_steps:
            return next(c for c in self.counts if c != best)  # look at the other count again
        return best

    def record(self, count: int, seconds: float) -> None:
        if count in self.times:
            self.times[count].append(seconds)
            self.steps += 1
            self.runs[count] += 1
