"""The ``hwlm`` command: a thin layer over the typed library.

Each command group lives in its own small module here and exposes
``register(subparsers)``, which adds its sub-commands and sets ``func`` on each.
A handler parses, calls one library function, prints, and returns an exit code.
Modules here import torch-using stages only *inside* handlers, so that
``hwlm plan ...`` starts without importing torch.

User errors (:class:`hwlm.errors.HwlmError`) are caught once, in :func:`main`,
and printed as one line with exit status 1. ``HWLM_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hwlm import __version__
from hwlm.errors import HwlmError

# Command-group modules, in the order of the flow. Each has register(subparsers).
COMMAND_MODULES = (
    "hwlm.cli.hw",
    "hwlm.cli.data",
    "hwlm.cli.train",
    "hwlm.cli.classify",
    "hwlm.cli.quickstart",
    "hwlm.cli.compress",
    "hwlm.cli.bench",
    "hwlm.cli.plan",
    "hwlm.cli.tune",
    "hwlm.cli.serve",
    "hwlm.cli.crypt",
    "hwlm.cli.report",
)


# Commands whose parser is built alone when they are the one asked for: ``hwlm plan`` must answer in under a
# second, and the other groups' parsers import their configs (model, training, tuning: ~0.1 s more).
ALONE = {"plan": "hwlm.cli.plan"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or only ``command``'s group where it is in :data:`ALONE`."""
    parser = argparse.ArgumentParser(
        prog="hwlm",
        description="Hardware-aware language models: prepare, train, evaluate, measure and plan LLM jobs.",
    )
    parser.add_argument("--version", action="version", version=f"hwlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (ALONE[command],) if command in ALONE else COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HwlmError as exc:
        if os.environ.get("HWLM_DEBUG"):
            raise
        print(f"hwlm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hwlm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
