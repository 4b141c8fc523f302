"""``hwlm report``: one self-contained HTML page from runs, bench records and the planner.

    hwlm report --run runs/train --bench runs/bench --out runs/report.html
    hwlm report --run runs/a runs/b --bench runs/bench/peak.json --job-model llama-2-13b --job-tokens 2e11
"""

from __future__ import annotations

import argparse

from hwlm.config import add_arguments, overrides_from_args, resolve
from hwlm.report.config import ReportConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hwlm report`` to the command line."""
    p = subparsers.add_parser(
        "report", help="write one HTML report: loss, throughput, roofline, predicted job cost, energy",
        description="Render training runs (loss, tokens/s, MFU), bench records (roofline, energy per token) and a "
                    "planner job priced on every catalog device into one HTML file with inline SVG charts.")
    p.add_argument("--run", dest="runs", nargs="+", action="extend", default=argparse.SUPPRESS, metavar="RUN_DIR",
                   help="run folders written by `hwlm train`, or by `hwlm compress` for the trade-off section "
                        "(repeatable)")
    p.add_argument("--bench", nargs="+", action="extend", default=argparse.SUPPRESS, metavar="RECORD_OR_DIR",
                   help="bench record files, or folders of them, written by `hwlm bench` (repeatable)")
    add_arguments(p, ReportConfig, skip=("runs", "bench"))
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hwlm.report import report

    cfg = resolve(ReportConfig, overrides=overrides_from_args(args, ReportConfig))
    path = report(cfg)
    print(f"report written to {path}")
    return 0
