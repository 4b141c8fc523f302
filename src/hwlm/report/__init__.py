"""report: one self-contained HTML page from training runs, bench records and the planner.

    >>> from hwlm.report import ReportConfig, report
    >>> report(ReportConfig(runs=[Path("runs/train")], bench=[Path("runs/bench")]))  # doctest: +SKIP

Modules: ``config`` (``ReportConfig``), ``collect`` (strict reading of run folders and bench
records), ``analysis`` (roofline placement, throughput and energy rows), ``jobs`` (one job
priced on every catalog device), ``plots`` (matplotlib -> inline SVG), ``html`` (page shell,
tables), ``sections`` (each section's HTML), ``build`` (``report(cfg) -> Path``).
torch is never imported here; matplotlib only while drawing.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use (PEP 562): every ``hwlm`` command builds its parser from ``hwlm.report.config``,
# and the sections pull in numpy and the plots (about 0.2 s) that only ``hwlm report`` needs.
_EXPORTS = {"report": "build", "render_report": "build", "collect_inputs": "collect", "load_run": "collect",
            "load_bench": "collect", "RunData": "collect", "BenchRecord": "collect", "ReportInputs": "collect",
            "ReportConfig": "config", "JobRow": "jobs", "price_job": "jobs"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hwlm.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hwlm.report.{_EXPORTS[name]}"), name)
