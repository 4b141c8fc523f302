"""``hwlm compress`` and ``hwlm import``: thin layers over :mod:`hwlm.compress` and :mod:`hwlm.export.hf_import`.

    hwlm compress --run runs/train --method int8 --out runs/int8            # w8a8 or w8a16, measured (auto)
    hwlm compress --run runs/train --method int4 --group-size 32 --out runs/int4
    hwlm compress --run runs/train --method prune --sparsity 0.5 --out runs/sparse
    hwlm compress --run runs/train --method prune --pattern 2:4 --out runs/sparse24
    hwlm compress --run runs/train --method distill --model tiny --out runs/student
    hwlm import --format hf ~/models/gpt2 --out runs/gpt2                  # a local transformers folder
"""

from __future__ import annotations

import argparse
import json

from hwlm.compress.config import CompressConfig
from hwlm.config import add_arguments, overrides_from_args, resolve


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compress", help="quantize, prune or distill a run into a new run folder",
        description="Write a new run folder from --run: int8 (w8a8 / w8a16), int4 (w4a16), prune "
                    "(magnitude or 2:4, then a masked fine-tune) or distill (a smaller student). The new run "
                    "loads in eval, generate and export. Prints the measured trade-off table.")
    p.add_argument("--config", metavar="RECIPE.toml", help="TOML file with a [compress] table")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    add_arguments(p, CompressConfig)
    p.set_defaults(func=run_compress)

    i = subparsers.add_parser(
        "import", help="turn a local Hugging Face GPT-2 or Llama folder into an hwlm run",
        description="Read a local transformers folder (config.json, model.safetensors or pytorch_model.bin, "
                    "tokenizer.json) and write an hwlm run folder with the same logits. Nothing is downloaded.")
    i.add_argument("dir", metavar="DIR", help="the Hugging Face model folder")
    i.add_argument("--format", default="hf", choices=["hf"], help="source format (default: hf)")
    i.add_argument("--out", required=True, help="new run folder to write")
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.set_defaults(func=run_import)


def run_compress(args: argparse.Namespace) -> int:
    from hwlm.bench.energy import EnergyMeter
    from hwlm.compress import compress

    cfg = resolve(CompressConfig, args.config, overrides_from_args(args, CompressConfig), section="compress")
    from hwlm.cli.train import run_data
    from hwlm.crypt import warn_unused_key

    warn_unused_key(cfg.key_file, [cfg.run, cfg.data or run_data(cfg.run)])  # an encrypted run writes encrypted
    result = compress(cfg, energy_meter=EnergyMeter)
    if args.json:
        print(json.dumps(result.record, indent=2))
        return 0
    choice = result.record.get("precision_choice", {})
    why = f" ({choice.get('asked')} -> {choice.get('chosen')}, measured)" if choice.get("asked") == "auto" else ""
    print(f"wrote {result.out}: {result.method}, {result.precision}{why}")
    if result.record.get("encryption"):
        print(f"  encrypted under key id {result.record['encryption']['key_id']}, as its source run")
    if result.table:
        print(result.table)
    return 0


def run_import(args: argparse.Namespace) -> int:
    from hwlm.export.hf_import import import_hf

    result = import_hf(args.dir, args.out)
    if args.json:
        print(json.dumps({"out": str(result.out), "flavour": result.flavour, "params": result.params}))
    else:
        print(f"wrote {result.out}: {result.flavour}, {result.params:,} parameters, from {args.dir}")
    return 0
