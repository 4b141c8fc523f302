"""``Fastest``: of a few ways to run the same step, the one that times fastest lately; ``LoneThreads``: the
torch threads a lone row's step runs on, chosen so.

    chooser = LoneThreads(batch=1, lone=2, probe=True)
    n = chooser.pick()                 # before a lone decode step
    chooser.record(n, seconds)         # after it
    path = Fastest(("compiled", "eager"))  # any options; the first is the answer until both are timed

A lone stream's step reads every weight for one row, so on one core that is the whole inter-token
latency, while the HTTP process beside it needs a small part of a core; on the other hand an OpenMP op
on every core waits at its barrier whenever another process preempts one of its threads, and on a
shared 2-core machine that can make the lone step slower on two threads than on one
(docs/benchmarks.md, "Where the time went"). So with ``probe`` the chooser times lone decode steps at
both counts and keeps the faster: it alternates until each count has half a window of steps, then
runs the count with the lower median of its last ``window`` steps, and every ``every`` lone steps
gives the other count ``probe_steps`` steps (a whole window: one look decides), so a change in the
machine's load is seen within ``every`` tokens, for a few percent of the lone steps on the slower count. Without ``probe`` (an explicit ``--lone-threads N``) it always answers ``lone``.
The serve runner's compiled lone step (``--compile``) is chosen against the eager one the same way: which
of the two is faster moved from one day to the next on the same VM (docs/benchmarks.md, serving, session 10).
"""

from __future__ import annotations

from collections import deque
from statistics import median

__all__ = ["Fastest", "LoneThreads"]


class Fastest:
    """Of ``options`` (hashable; the first is the answer until each has half a window of times), the one whose
    recent steps have the lowest median, with a look at the others every ``every`` steps."""

    def __init__(self, options: tuple, window: int = 4, every: int = 128, probe_steps: int = 4) -> None:
        self.default = options[0]
        self.counts = tuple(dict.fromkeys(options))  # the options, in order, once each
        self.window, self.every, self.probe_steps = window, every, probe_steps
        self.times: dict = {c: deque(maxlen=window) for c in self.counts}
        self.steps = 0  # steps recorded
        self.runs: dict = dict.fromkeys(self.counts, 0)  # of them with each option

    def best(self) -> object:
        """The option with the lower median over its recent steps (the first until all have some)."""
        if len(self.counts) == 1 or any(len(t) < self.window // 2 for t in self.times.values()):
            return self.default
        return min(self.counts, key=lambda c: median(self.times[c]))

    def pick(self) -> object:
        if len(self.counts) == 1:
            return self.default
        fewest = min(self.counts, key=lambda c: len(self.times[c]))
        if len(self.times[fewest]) < self.window // 2:
            return fewest  # still measuring all: take turns
        best = self.best()
        if self.steps % self.every < self.probe_steps:  # look at the others again (one at a time)
            others = [c for c in self.counts if c != best]
            return others[(self.steps // self.every) % len(others)]
        return best

    def record(self, option: object, seconds: float) -> None:
        if option in self.times:
            self.times[option].append(seconds)
            self.steps += 1
            self.runs[option] += 1


class LoneThreads(Fastest):
    """:class:`Fastest` over thread counts: ``lone`` and, with ``probe``, ``batch``."""

    def __init__(self, batch: int, lone: int, probe: bool = True, window: int = 4, every: int = 128,
                 probe_steps: int = 4) -> None:
        self.lone = lone
        super().__init__((lone, batch) if probe and lone != batch else (lone,), window, every, probe_steps)
