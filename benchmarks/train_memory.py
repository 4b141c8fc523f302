"""Training memory on this machine, measured the way ``hwlm quickstart`` measures it, against the formulas.

Each case (model preset x batch size) runs in a fresh process, so no case inherits another's heap:
the quickstart's corpus is prepared (cached under ``runs/bench/train-memory/data``), the runtime that
training loads once is loaded (:func:`hwlm.bench.measure.load_training_runtime`), and ``hwlm.train``
runs a few steps in fp32 on the CPU inside :class:`hwlm.bench.measure.MemoryWatch` (peak anonymous
resident memory above the baseline, sampled every 20 ms, as the quickstart reports it). The
prediction is :func:`hwlm.formulas.training_memory` for the run's own ``config.json``.

    flock /tmp/hwlm-bench.lock .venv/bin/python benchmarks/train_memory.py [--steps 6] [--out runs/bench/train-memory.json]

Each case also runs a second time, in another fresh process, under ``torch.profiler`` with
``profile_memory=True``: the peak of the CPU allocator's running total ("Total Allocated" in the trace) is
the peak of the bytes live in tensors, whatever the heap does around them. The formulas count tensors,
so that column checks them; the resident figure adds what glibc's heap keeps (see docs/benchmarks.md).

Prints a Markdown table (for docs/benchmarks.md) and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CASES = [("debug", 8), ("debug", 32), ("tiny", 16), ("tiny", 64), ("mid", 4), ("mid", 16),
         ("llama-tiny", 16), ("llama-tiny", 64)]


def live_peak(fn) -> int:
    """Peak bytes live in CPU tensors while ``fn()`` runs, from the profiler's allocator trace."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    if not events:
        return 0
    start = events[0]["args"]["Total Allocated"] - events[0]["args"]["Bytes"]  # live before the first event
    return max(e["args"]["Total Allocated"] for e in events) - start


def run_case(model: str, batch: int, steps: int, root: Path, live: bool = False, release: bool = False) -> dict:
    """One case, in this process (the parent starts a fresh interpreter per case); ``live``: the tensors' peak;
    ``release``: glibc's default policy instead of hwlm's kept heap (the parent also fixes the mmap threshold)."""
    if release:
        import hwlm.train.run

        hwlm.train.run.keep_freed_memory = lambda: False  # the experiment: leave the allocator alone
    import shutil

    from hwlm.bench.measure import MemoryWatch
    from hwlm.formulas import training_memory
    from hwlm.model import ModelConfig
    from hwlm.quickstart import QuickstartConfig, prepare_corpus
    from hwlm.train.config import TrainConfig
    from hwlm.train.loop import train

    data, _ = prepare_corpus(QuickstartConfig(out=root))
    out = root / f"train-{model}-{batch}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(data=data, out=out, model=model, batch_size=batch, max_steps=steps, eval_interval=250,
                      eval_batches=10, log_interval=10, ckpt_interval=0, precision="fp32", device="cpu",
                      progress=False, peak_flops=1e9, weight_decay=0.1, seed=1337)
    if live:
        measured = live_peak(lambda: train(cfg, say=lambda s: None))
    else:
        with MemoryWatch("cpu") as watch:
            train(cfg, say=lambda s: None)
        measured = watch.added
    mcfg = ModelConfig(**json.loads((out / "config.json").read_text())["model"])
    mem = training_memory(mcfg.to_arch(), batch, mcfg.block_size, "fp32")
    parts = {k: getattr(mem, k) for k in ("weights", "gradients", "optimizer", "activations", "loss",
                                          "allocator_slack")}
    shutil.rmtree(out, ignore_errors=True)
    return {"model": model, "batch": batch, "seq_len": mcfg.block_size, "vocab": mcfg.vocab_size,
            "steps": steps, "measured_bytes": measured, "predicted_bytes": mem.total, "parts": parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/train-memory.json"))
    ap.add_argument("--root", type=Path, default=Path("runs/bench/train-memory"))
    ap.add_argument("--case", help=argparse.SUPPRESS)  # MODEL:BATCH, run by the parent in a fresh process
    ap.add_argument("--live", action="store_true", help=argparse.SUPPRESS)  # with --case: the tensors' peak
    ap.add_argument("--release", action="store_true",
                    help="also measure each case resident with glibc returning freed blocks (a fixed 128 KiB mmap "
                         "threshold, hwlm's kept heap off): what the heap adds above the tensors")
    args = ap.parse_args()
    if args.case:
        model, batch = args.case.split(":")
        print(json.dumps(run_case(model, int(batch), args.steps, args.root, args.live, args.release)))
        return
    rows = []
    for model, batch in CASES:
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--case", f"{model}:{batch}", "--steps", str(args.steps),
               "--root", str(args.root)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        done = subprocess.run(cmd + ["--live"], capture_output=True, text=True, check=True)
        row["live_bytes"] = json.loads(done.stdout.strip().splitlines()[-1])["measured_bytes"]
        if args.release:
            # A fixed threshold also stops glibc raising it as blocks are freed, so every large block is its own
            # mapping, returned when freed (the price: the next step's page faults).
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            done = subprocess.run(cmd + ["--release"], capture_output=True, text=True, check=True, env=env)
            row["release_bytes"] = json.loads(done.stdout.strip().splitlines()[-1])["measured_bytes"]
        row["load_before"] = load
        rows.append(row)
        if args.release:
            print(f"{model} b={batch}: {row['release_bytes'] / 2**20:.1f} MiB resident with freed blocks returned",
                  file=sys.stderr)
        print(f"{model} b={batch}: measured {row['measured_bytes'] / 2**20:.1f} MiB resident, "
              f"{row['live_bytes'] / 2**20:.1f} MiB in tensors, predicted {row['predicted_bytes'] / 2**20:.1f} MiB",
              file=sys.stderr)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "load_after": os.getloadavg(), "rows": rows}, indent=1))
    print(f"machine: {machine}; load average before each case "
          + ", ".join(f"{r['load_before']:.1f}" for r in rows) + "\n")
    rel = any("release_bytes" in r for r in rows)
    print("| model | batch x seq | resident (MiB) | " + ("resident, freed blocks returned (MiB) | " if rel else "")
          + "live tensors (MiB) | predicted (MiB) | error vs resident | error vs tensors | weights+grads+Adam | "
          "activations | loss | heap slack |")
    print("|---" * (11 + rel) + "|")
    for r in rows:
        p = r["parts"]
        state = (p["weights"] + p["gradients"] + p["optimizer"]) / 2**20
        err = r["predicted_bytes"] / r["measured_bytes"] - 1
        # The tensors' peak holds no heap slack: compare it with the prediction less that term.
        tensors = r["predicted_bytes"] - p["allocator_slack"]
        err_live = tensors / r["live_bytes"] - 1
        released = f"{r['release_bytes'] / 2**20:.1f} | " if rel else ""
        print(f"| {r['model']} | {r['batch']} x {r['seq_len']} | {r['measured_bytes'] / 2**20:.1f} | {released}"
              f"{r['live_bytes'] / 2**20:.1f} | {r['predicted_bytes'] / 2**20:.1f} | {err:+.0%} | {err_live:+.1%} | "
              f"{state:.1f} | {p['activations'] / 2**20:.1f} | {p['loss'] / 2**20:.1f} | "
              f"{p['allocator_slack'] / 2**20:.1f} |")


if __name__ == "__main__":
    main()
