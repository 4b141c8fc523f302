"""``hwlm bench ...``: measure this machine and calibrate the planner.

    hwlm bench peak   [--device D] [--dtypes fp32,bf16] [--size N] [--repeats R]
    hwlm bench train  --model gpt2-124m --batch 8 --seq 1024 --steps 20 --precision bf16 --compile
    hwlm bench infer  --model tiny --batch-sizes 1,8 --prompt-lens 128,512 --new-tokens 64
    hwlm bench infer  --run runs/int8 --batch-sizes 1 --prompt-lens 16   # a compressed run, in its format
    hwlm bench infer  --run runs/secret --key-file data.key               # an encrypted run (train --encrypt)
    hwlm bench compare A.json B.json
    hwlm bench calibrate RECORDS... --hardware h100-sxm --out calibration.json

Every run writes a versioned JSON record (``--out``, default ``runs/bench/<benchmark>-<time>.json``).
torch-using code is imported inside the handlers.
"""

from __future__ import annotations

import argparse

from hwlm.crypt import KEY_FILE_HELP  # torch-free


def _csv(kind: type) -> object:
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of {kind.__name__}") from None
    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda[:N], mps or xla (default: auto)")
    p.add_argument("--out", default=None, help="record file (default: runs/bench/<benchmark>-<time>.json)")
    p.add_argument("--energy", default="auto", choices=["auto", "rapl", "nvml", "estimate", "off"],
                   help="how to meter energy: counters where present, else an estimate from TDP (default: auto)")
    p.add_argument("--tdp", type=float, default=None, metavar="WATTS",
                   help="TDP in watts for the energy estimate (default: NVML power limit, or 5 W per CPU core)")
    p.add_argument("--json", action="store_true", help="print the record as JSON instead of a table")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="model preset: debug, tiny, mid, gpt2-124m, llama-* (default: tiny)")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary size (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and random tokens (default: 0)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hwlm bench`` and its sub-commands."""
    bench = subparsers.add_parser("bench", help="measure this machine (peak, train, infer) and calibrate the planner")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")

    def usage(_args: argparse.Namespace) -> int:
        bench.print_help()
        return 2
    bench.set_defaults(func=usage)

    p = sub.add_parser("peak", help="matmul FLOP/s per data type, memory and host-to-device bandwidth")
    _common(p)
    p.add_argument("--dtypes", type=_csv(str), default=None, help="comma list (default: fp32,tf32,bf16,fp16,int8)")
    p.add_argument("--size", type=int, default=None, help="matmul n (default: 8192 on CUDA, 2048 on CPU)")
    p.add_argument("--repeats", type=int, default=10, help="timed samples per measurement (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls (default: 2)")
    p.add_argument("--membw-mib", type=int, default=None, help="copy size in MiB (default: 2048 CUDA, 256 CPU)")
    p.add_argument("--cache-kib", type=int, default=None,
                   help="cache-resident copy size in KiB (default: 8192 CUDA, 512 CPU)")
    p.add_argument("--h2d-mib", type=int, default=None, help="pinned host-to-device copy in MiB (default: 1024)")
    p.set_defaults(func=_peak)

    _add_workloads(sub)
    _add_calibrate(sub)

    p = sub.add_parser("compare", help="two bench records side by side, with ratios")
    p.add_argument("a", help="first record (A)")
    p.add_argument("b", help="second record (B)")
    p.set_defaults(func=_compare)


def _add_workloads(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="time training steps (forward, backward, AdamW) of a preset model")
    _common(p)
    _model_args(p)
    p.add_argument("--batch", type=int, default=8, help="sequences per step (default: 8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: the preset's block size)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default: 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps, compilation included (default: 3)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"],
                   help="fp32, tf32 (CUDA), bf16 autocast, fp16 autocast with loss scaling (CUDA) (default: fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--peak-record", default=None, help="a 'peak' record whose matmul figure is the MFU reference "
                   "(default: a quick measurement now)")
    p.add_argument("--datasheet-peak", type=float, default=None, metavar="FLOPS",
                   help="datasheet FLOP/s for the precision, for a second MFU figure")
    p.set_defaults(func=_train)

    p = sub.add_parser("infer", help="time prefill (TTFT) and decode (TPOT) over batch sizes and prompt lengths")
    _common(p)
    _model_args(p)
    p.add_argument("--batch-sizes", type=_csv(int), default=[1, 8], help="comma list (default: 1,8)")
    p.add_argument("--prompt-lens", type=_csv(int), default=[32], help="comma list (default: 32)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per sequence (default: 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per grid cell (default: 3)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="data type of weights and KV cache (default: fp32)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                   help="torch, or onnx: the same weights exported and run by onnxruntime (CPU, fp32)")
    p.add_argument("--run", default=None, metavar="RUN_DIR",
                   help="time a run's own weights instead of --model's random ones; a compressed run (w8a8, w8a16, "
                        "w4a16) runs in its stored format, which the record names as its precision")
    p.add_argument("--key-file", default=None, metavar="FILE", help=f"with --run: {KEY_FILE_HELP}")
    p.set_defaults(func=_infer)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="turn bench records into the planner's calibration file")
    p.add_argument("records", nargs="+", help="bench record files (peak, train, infer)")
    # "device" is a torch device everywhere else in hwlm; a catalog id is "hardware" (as in hwlm plan).
    p.add_argument("--hardware", default=None,
                   help="catalog id of this hardware (e.g. h100-sxm), or 'this-machine' for measured peaks")
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)  # the old name: an error naming the new
    p.add_argument("--out", required=True, help="calibration JSON to write")
    p.add_argument("--datasheet-flops", type=_csv(str), default=None, metavar="DTYPE=FLOPS,...",
                   help="datasheet peaks instead of the catalog's, e.g. bf16=989e12,fp32=67e12")
    p.add_argument("--datasheet-bw", type=float, default=None, metavar="BYTES_PER_S",
                   help="datasheet memory bandwidth instead of the catalog's")
    p.set_defaults(func=_calibrate)


def _write(record: dict, args: argparse.Namespace, table: str) -> int:
    import json
    import sys

    from hwlm.bench.records import write_record
    path = write_record(record, args.out)
    print(json.dumps(record, indent=2) if args.json else table)
    # with --json, stdout is the record alone, so scripts can parse it
    print(f"record written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _peak(args: argparse.Namespace) -> int:
    from hwlm.bench.peak import PeakConfig, format_peak, run_peak
    from hwlm.device import TORCH_DTYPES as DTYPES
    cfg = PeakConfig(device=args.device, dtypes=args.dtypes or list(DTYPES), size=args.size, repeats=args.repeats,
                     warmup=args.warmup, membw_mib=args.membw_mib, cache_kib=args.cache_kib, h2d_mib=args.h2d_mib, energy=args.energy,
                     tdp_w=args.tdp)
    record = run_peak(cfg)
    return _write(record, args, format_peak(record))


def _compare(args: argparse.Namespace) -> int:
    from hwlm.bench.compare import compare_files, format_comparison
    print(format_comparison(compare_files(args.a, args.b)))
    return 0


def _train(args: argparse.Namespace) -> int:
    from hwlm.bench.workloads import TrainBenchConfig, format_workload, run_train_bench
    cfg = TrainBenchConfig(model=args.model, device=args.device, batch=args.batch, seq=args.seq, steps=args.steps,
                           warmup=args.warmup, precision=args.precision, compile=args.compile,
                           peak_record=args.peak_record, datasheet_peak=args.datasheet_peak, energy=args.energy,
                           tdp_w=args.tdp, seed=args.seed, vocab_size=args.vocab_size)
    record = run_train_bench(cfg)
    return _write(record, args, format_workload(record))


def _infer(args: argparse.Namespace) -> int:
    from hwlm.bench.infer import InferBenchConfig, run_infer_bench
    from hwlm.bench.workloads import format_workload
    from hwlm.crypt import warn_unused_key
    if args.run is not None:  # without --run, bench infer refuses --key-file itself
        warn_unused_key(args.key_file, [args.run])
    cfg = InferBenchConfig(model=args.model, device=args.device, batch_sizes=args.batch_sizes,
                           prompt_lens=args.prompt_lens, new_tokens=args.new_tokens, repeats=args.repeats,
                           precision=args.precision, energy=args.energy, tdp_w=args.tdp, seed=args.seed,
                           vocab_size=args.vocab_size, backend=args.backend, run=args.run,
                           key_file=args.key_file)
    record = run_infer_bench(cfg)
    return _write(record, args, format_workload(record))


def _datasheet(args: argparse.Namespace):
    """Datasheet peaks from the flags, else from the planner catalog (the CLI may import any stage)."""
    from hwlm.bench.calibrate import Datasheet
    from hwlm.calibration import THIS_MACHINE
    from hwlm.errors import ConfigError
    flops: dict[str, float] = {}
    for item in args.datasheet_flops or []:
        dtype, _, value = item.partition("=")
        try:
            flops[dtype.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--datasheet-flops item '{item}' is not DTYPE=FLOPS (e.g. bf16=989e12)") from None
    if flops or args.datasheet_bw:
        return Datasheet(flops, args.datasheet_bw, "command line")
    if args.hardware == THIS_MACHINE:
        return None
    from hwlm.plan.catalog import get_device
    dev = get_device(args.hardware)
    return Datasheet(dict(dev.flops), dev.memory_bw, dev.name)


def _calibrate(args: argparse.Namespace) -> int:
    from hwlm.bench.calibrate import calibrate_files
    from hwlm.calibration import write_calibration
    from hwlm.errors import ConfigError
    if args.device is not None:
        raise ConfigError(f"bench calibrate takes --hardware {args.device} (a catalog id or this-machine); "
                          "--device names a torch device elsewhere in hwlm")
    if not args.hardware:
        raise ConfigError("bench calibrate needs --hardware: a catalog id (e.g. h100-sxm) or this-machine")
    doc = calibrate_files(args.records, args.hardware, _datasheet(args))
    path = write_calibration(doc, args.out)
    for e in doc["entries"]:
        print(f"{e['device']:<14} {e['phase']:<8} {e['dtype']:<5} efficiency {e['efficiency']:.3f} "
              f"(measured {e['measured']:.4g} {e['unit']} / {e['reference']} {e['reference_value']:.4g})")
    for n in doc["notes"]:
        print(f"note: {n}")
    print(f"calibration written to {path}")
    return 0
