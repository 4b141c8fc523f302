"""Numerical faults: steps whose loss is NaN/inf are skipped and counted; too many in a row end the run.

A skipped step changes no weight and no optimizer state (the data and the step counter move on,
as after any step). The decision "this step's loss was finite" is made once for all ranks (see
:func:`hwlm.train.parallel.all_true`), so every rank skips the same steps.

``HWLM_TEST_NAN_STEPS=3,4`` (test hook) makes those steps' loss NaN, on every rank or, with
``HWLM_TEST_NAN_RANK=R``, on rank R only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hwlm.errors import ConfigError

__all__ = ["NonFiniteGuard", "poisoned"]


def poisoned(step: int, rank: int) -> bool:
    """Test hook: should step ``step`` (1-based) on ``rank`` get a NaN loss?"""
    steps = os.environ.get("HWLM_TEST_NAN_STEPS")
    if not steps:
        return False
    only = os.environ.get("HWLM_TEST_NAN_RANK")
    return str(step) in steps.split(",") and (only is None or int(only) == rank)


@dataclass
class NonFiniteGuard:
    """Counts skipped steps; ``limit`` in a row raise a one-line ConfigError."""

    limit: int
    total: int = 0    # over the whole run (the counts of earlier runs come back from the checkpoint)
    streak: int = 0   # in a row, up to now

    def record(self, finite: bool, step: int, loss: float, last_ckpt: Path | None,
               say: Callable[[str], None]) -> None:
        """Note step ``step``'s outcome; ``loss`` is its (global) value, for the message."""
        if finite:
            self.streak = 0
            return
        self.total += 1
        self.streak += 1
        say(f"step {step}: loss was {loss}; update skipped ({self.streak} in a row, the run stops at {self.limit})")
        if self.streak >= self.limit:
            last = last_ckpt.name if last_ckpt is not None else "none (none written yet)"
            raise ConfigError(f"training loss was NaN/inf for {self.streak} steps in a row (steps "
                              f"{step - self.streak + 1}-{step}); lower --lr, use --precision fp32 or check the "
                              f"data; last good checkpoint: {last}")
