"""``hwlm hw``: describe this machine (CPU, memory, GPUs, the device hwlm will use)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hwlm hw`` to the command line."""
    p = subparsers.add_parser("hw", help="describe this machine: CPU, memory, GPUs, the device hwlm will use")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hwlm.hw import detect, render

    info = detect()
    if args.json:
        import json

        print(json.dumps(info.to_dict(), indent=2))
    else:
        print(render(info))
    return 0
