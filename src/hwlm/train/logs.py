"""Run logs: one JSON object per log step in ``log.jsonl``, the same scalars in TensorBoard.

Each line of ``log.jsonl`` is ``{"step", "tokens", "loss", "lr", "tokens_per_s", "mfu"}`` plus
``"val_loss"`` on the steps that evaluated (``mfu`` is null when the peak is unknown), and
``"nonfinite_steps"`` (steps skipped so far because their loss was NaN/inf) once there were any.
``loss`` is the mean over the window's finite steps and over all ranks (null if none was finite).
On resume from step ``s`` the lines after ``s`` are dropped and TensorBoard is opened with
``purge_step=s + 1``, so neither holds a step twice.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from hwlm.io import append_line, atomic_write_text

__all__ = ["RunLogger", "read_log", "info"]

LOG_FILE = "log.jsonl"
# log.jsonl key -> TensorBoard tag
_TB_TAGS = {"loss": "train/loss", "val_loss": "val/loss", "lr": "train/lr", "tokens_per_s": "perf/tokens_per_s",
            "mfu": "perf/mfu", "tokens": "train/tokens",
            "nonfinite_steps": "train/nonfinite_steps"}


def info(msg: str) -> None:
    """A one-line message for the person watching, on stderr (keeps stdout for results)."""
    from tqdm import tqdm
    tqdm.write(f"hwlm: {msg}", file=sys.stderr)


def _plain(v: Any) -> Any:
    # JSON has no NaN/inf: write null so every line stays valid JSON.
    return None if isinstance(v, float) and not math.isfinite(v) else v


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/log.jsonl`` (an empty list when there is none)."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break  # a process killed mid-write leaves at most its last line cut short
            raise
    return records


class RunLogger:
    """Appends records to ``log.jsonl`` and TensorBoard; a disabled logger (not rank 0) does nothing."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / LOG_FILE
        self._tb = None
        self._file: Path | None = None
        if not enabled:
            return
        kept = [r for r in read_log(run_dir) if r.get("step", 0) <= resume_step] if resume_step is not None else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.path
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # A fresh start purges from step 0: events of a run killed before its first checkpoint go.
            purge = resume_step + 1 if resume_step is not None else 0
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must hold ``step``)."""
        if not self.enabled or self._file is None:
            return
        record = {k: _plain(v) for k, v in record.items()}
        # One locked append per line: a reader (report, a watching script) or another writer
        # never sees two lines interleaved.
        append_line(self.path, json.dumps(record))
        if self._tb is not None:
            for key, tag in _TB_TAGS.items():
                if record.get(key) is not None:
                    self._tb.add_scalar(tag, record[key], global_step=record["step"])
            self._tb.flush()

    def close(self) -> None:
        self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
