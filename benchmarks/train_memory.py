"""Training memory on this machine, measured the way ``hwlm quickstart`` measures it, against the formulas.

Each case (model preset x batch size) runs in a fresh process, so no case inherits another's heap:
the quickstart's corpus is prepared (cached under ``runs/bench/train-memory/data``), the runtime that
training loads once is loaded (:func:`hwlm.bench.measure.load_training_runtime`), and ``hwlm.train``
runs a few steps in fp32 on the CPU inside :class:`hwlm.bench.measure.MemoryWatch` (peak anonymous
resident memory above the baseline, sampled every 20 ms, as the quickstart reports it). The
prediction is :func:`hwlm.formulas.training_memory` for the run's own ``config.json``.

    flock /tmp/hwlm-bench.lock .venv/bin/python benchmarks/train_memory.py [--steps 6] [--out runs/bench/train-memory.json]

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


def run_case(model: str, batch: int, steps: int, root: Path) -> dict:
    """One case, in this process (the parent starts a fresh interpreter per case)."""
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
    with MemoryWatch("cpu") as watch:
        train(cfg, say=lambda s: None)
    mcfg = ModelConfig(**json.loads((out / "config.json").read_text())["model"])
    mem = training_memory(mcfg.to_arch(), batch, mcfg.block_size, "fp32")
    parts = {k: getattr(mem, k) for k in ("weights", "gradients", "optimizer", "activations", "loss")}
    shutil.rmtree(out, ignore_errors=True)
    return {"model": model, "batch": batch, "seq_len": mcfg.block_size, "vocab": mcfg.vocab_size,
            "steps": steps, "measured_bytes": watch.added, "predicted_bytes": mem.total, "parts": parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/train-memory.json"))
    ap.add_argument("--root", type=Path, default=Path("runs/bench/train-memory"))
    ap.add_argument("--case", help=argparse.SUPPRESS)  # MODEL:BATCH, run by the parent in a fresh process
    args = ap.parse_args()
    if args.case:
        model, batch = args.case.split(":")
        print(json.dumps(run_case(model, int(batch), args.steps, args.root)))
        return
    rows = []
    for model, batch in CASES:
        load = os.getloadavg()[0]
        done = subprocess.run([sys.executable, __file__, "--case", f"{model}:{batch}", "--steps", str(args.steps),
                               "--root", str(args.root)], capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["load_before"] = load
        rows.append(row)
        print(f"{model} b={batch}: measured {row['measured_bytes'] / 2**20:.1f} MiB, "
              f"predicted {row['predicted_bytes'] / 2**20:.1f} MiB", file=sys.stderr)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "load_after": os.getloadavg(), "rows": rows}, indent=1))
    print(f"machine: {machine}; load average before each case "
          + ", ".join(f"{r['load_before']:.1f}" for r in rows) + "\n")
    print("| model | batch x seq | measured (MiB) | predicted (MiB) | error | weights+grads+Adam | activations | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["parts"]
        state = (p["weights"] + p["gradients"] + p["optimizer"]) / 2**20
        err = r["predicted_bytes"] / r["measured_bytes"] - 1
        print(f"| {r['model']} | {r['batch']} x {r['seq_len']} | {r['measured_bytes'] / 2**20:.1f} | "
              f"{r['predicted_bytes'] / 2**20:.1f} | {err:+.0%} | {state:.1f} | {p['activations'] / 2**20:.1f} | "
              f"{p['loss'] / 2**20:.1f} |")


if __name__ == "__main__":
    main()
