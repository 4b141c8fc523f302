"""``hwlm prepare``: raw text -> tokenizer + token shards (a thin layer over :func:`hwlm.data.prepare`)."""

from __future__ import annotations

import argparse
import json

from hwlm.config import add_arguments, overrides_from_args, resolve
from hwlm.data.config import PrepareConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare", help="tokenize text files into training shards",
        description="Train (or reuse) a byte-level BPE tokenizer and write token shards + manifest.json. "
                    "With no INPUTS, the built-in corpus (Python's pydoc topics) is used.")
    p.add_argument("inputs", nargs="*", metavar="INPUTS", default=argparse.SUPPRESS,
                   help="text or .jsonl files, folders or globs")
    p.add_argument("--config", metavar="RECIPE.toml", help="TOML recipe; its [prepare] table sets these options")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_arguments(p, PrepareConfig, skip=("inputs",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hwlm.data.pipeline import prepare

    overrides = overrides_from_args(args, PrepareConfig)
    if not overrides.get("inputs"):
        overrides.pop("inputs", None)  # none typed: keep the recipe's inputs, else the built-in corpus
    cfg = resolve(PrepareConfig, file=args.config, overrides=overrides, section="prepare")
    if cfg.task == "classify":
        from hwlm.cli.classify import run_prepare_classify

        return run_prepare_classify(cfg, args.json)
    result = prepare(cfg)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    d = result.to_dict()
    bad = d["invalid_utf8"]
    where = f" (first: {bad['first']['file']} at byte {bad['first']['offset']})" if bad["count"] else ""
    print(f"prepared {d['out']}{' (resumed)' if d['resumed'] else ''}: vocab {d['vocab_size']}, dtype {d['dtype']}")
    for split in ("train", "val"):
        print(f"  {split:5s} {d['documents'][split]:>9,} documents {d['tokens'][split]:>13,} tokens "
              f"{d['bytes'][split] / 1e6:>10.2f} MB in {d['shards'][split]} shards")
    print(f"  {d['mb_per_s']:.2f} MB/s over {d['seconds']:.1f} s; invalid UTF-8 bytes replaced: {bad['count']}{where}")
    if result.manifest.get("encryption"):
        print(f"  shards encrypted under key id {result.manifest['encryption']['key_id']} "
              f"({result.manifest['encryption']['scheme']})")
    for note in d["notes"]:
        print(f"  note: {note}")
    if d["skipped_files"]:
        print(f"  skipped {len(d['skipped_files'])} binary-looking files, e.g. {d['skipped_files'][0]}")
    return 0
