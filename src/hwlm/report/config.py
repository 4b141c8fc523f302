"""``ReportConfig``: what ``hwlm report`` reads and which planned job it prices; torch-free.

    cfg = ReportConfig(runs=[Path("runs/train")], bench=[Path("runs/bench")], out=Path("runs/report.html"))

The *job* (``job_model`` on ``job_tokens`` tokens over ``job_devices`` devices) is priced on
every catalog device by :func:`hwlm.plan.training.estimate_training`. The default, Llama 2 7B
on 100B tokens over 8 devices, is a modest fine-tuning-scale run that fits most accelerators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hwlm.config import option
from hwlm.errors import ConfigError

__all__ = ["ReportConfig"]


@dataclass
class ReportConfig:
    """Arguments of :func:`hwlm.report.report`; one docstring per field becomes ``--help``."""

    runs: list[Path] = option(help="run folders written by `hwlm train` (each holds log.jsonl) or by `hwlm compress` "
                                   "(compress.json: the trade-off section)",
                              factory=list)
    bench: list[Path] = option(help="bench record files, or folders of them, written by `hwlm bench`", factory=list)
    out: Path = option(Path("runs/report.html"), "HTML file to write (one self-contained file)")
    job_model: str = option("llama-2-7b", "planner model preset (or config.json) of the job priced across hardware")
    job_tokens: float = option(1e11, "training tokens of the priced job")
    job_devices: int = option(8, "devices of each kind the priced job runs on")
    job_precision: str = option("bf16", "training precision of the priced job (devices without it fall back)")
    title: str = option("hwlm report", "title at the top of the page")

    def __post_init__(self) -> None:
        self.runs = [Path(p) for p in self.runs]
        self.bench = [Path(p) for p in self.bench]
        self.out = Path(self.out)
        if not (isinstance(self.job_tokens, (int, float)) and math.isfinite(self.job_tokens) and self.job_tokens > 0):
            raise ConfigError(f"report --job-tokens is {self.job_tokens!r}; give a positive number such as 1e11")
        if not isinstance(self.job_devices, int) or self.job_devices < 1:
            raise ConfigError(f"report --job-devices is {self.job_devices!r}; give a whole number >= 1")
        if not self.job_model.strip():
            raise ConfigError("report --job-model is empty; name a planner model such as llama-2-7b")
