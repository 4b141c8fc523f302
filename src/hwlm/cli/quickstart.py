"""``hwlm quickstart``: the whole flow on this machine (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hwlm.config import add_arguments, overrides_from_args, resolve
from hwlm.quickstart import QuickstartConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart", help="prepare, train, evaluate and sample a small model on this machine",
        description="Prepare the built-in corpus (Python's pydoc topics), train a small model for a time budget, "
                    "evaluate it, generate a sample and print a summary with tokens/s, MFU and the val loss "
                    "beside the corpus's unigram entropy. About two minutes on two CPU cores.")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    add_arguments(p, QuickstartConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from hwlm.quickstart import quickstart, render_summary

    cfg = resolve(QuickstartConfig, overrides=overrides_from_args(args, QuickstartConfig))
    # With --json the step headlines go to stderr so that stdout is only the JSON document.
    say = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    result = quickstart(cfg, say=say)
    if args.json:
        print(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                          for k, v in dataclasses.asdict(result).items()}, indent=2))
    else:
        print(render_summary(result))
    return 0
