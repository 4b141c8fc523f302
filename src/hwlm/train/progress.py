"""The training progress bar: step, loss, tokens/s, MFU and time left, on stderr (tqdm)."""

from __future__ import annotations

import sys

__all__ = ["Progress", "format_seconds"]


def format_seconds(s: float | None) -> str:
    """``75`` -> ``'1m15s'``; None -> ``'?'``."""
    if s is None or s != s or s < 0:
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
    """A tqdm bar over optimizer steps; ``total`` None when only a time budget bounds the run."""

    def __init__(self, total: int | None, initial: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True,
                             leave=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def update(self, step: int, loss: float, tokens_per_s: float, mfu: float | None, eta_s: float | None) -> None:
        """Move the bar to ``step`` and show the latest numbers."""
        if self._bar is None:
            return
        self._bar.n = step
        mfu_text = "n/a" if mfu is None else f"{100 * mfu:.1f}%"
        self._bar.set_postfix_str(f"loss {loss:.3f}, {tokens_per_s:,.0f} tok/s, MFU {mfu_text}, "
                                  f"ETA {format_seconds(eta_s)}", refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
