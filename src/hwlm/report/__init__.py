"""report: one self-contained HTML page from training runs, bench records and the planner.

    >>> from hwlm.report import ReportConfig, report
    >>> report(ReportConfig(runs=[Path("runs/train")], bench=[Path("runs/bench")]))  # doctest: +SKIP

Modules: ``config`` (``ReportConfig``), ``collect`` (strict reading of run folders and bench
records), ``analysis`` (roofline placement, throughput and energy rows), ``jobs`` (one job
priced on every catalog device), ``plots`` (matplotlib -> inline SVG), ``html`` (page shell,
tables), ``sections`` (each section's HTML), ``build`` (``report(cfg) -> Path``).
torch is never imported here; matplotlib only while drawing.
"""

from hwlm.report.build import render_report, report
from hwlm.report.collect import BenchRecord, ReportInputs, RunData, collect_inputs, load_bench, load_run
from hwlm.report.config import ReportConfig
from hwlm.report.jobs import JobRow, price_job

__all__ = ["ReportConfig", "report", "render_report", "collect_inputs", "load_run", "load_bench", "RunData",
           "BenchRecord", "ReportInputs", "JobRow", "price_job"]
