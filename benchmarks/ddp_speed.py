"""DDP on one CPU host: 2 processes of 1 thread against 1 process of 2 threads, tokens/s of `hwlm train`.

Both runs train the ``mid`` shape (context 256, width 384, 6 layers, 6 heads) on the same prepared
data with the same *global* batch, fp32, through the real command (``hwlm train --nproc N``), and
report the throughput the run itself measured (training steps only: start-up, evaluation and
checkpoints are not counted; the first, slower step is, alike in both). The runs alternate so
that other load on the machine hits both alike, and the median over rounds counts.

    python benchmarks/ddp_speed.py                     # 2 processes vs 1, 20 timed steps each, 2 rounds
    python benchmarks/ddp_speed.py --steps 3 --rounds 1 --batch 4   # a quick check that it works

Prints the ratio DDP / one process (target >= 0.85; docs/distributed.md explains what limits it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no will").split()


def make_data(work: Path, vocab: int) -> Path:
    """A small prepared data folder (random sentences): speed does not depend on the text."""
    from hwlm.data import PrepareConfig, prepare

    text = work / "text"
    text.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(40):
        (text / f"d{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(4000)) + "\n")
    out = work / "data"
    prepare(PrepareConfig(inputs=[str(text)], out=out, vocab_size=vocab, val_fraction=0.05, seed=0))
    return out


def run(data: Path, out: Path, nproc: int, global_batch: int, steps: int, threads: int) -> float:
    """tokens/s of one `hwlm train` run (global: all processes together)."""
    args = [sys.executable, "-m", "hwlm", "train", "--data", str(data), "--out", str(out), "--model", "mid",
            "--batch-size", str(global_batch // nproc), "--max-steps", str(steps), "--precision", "fp32",
            "--device", "cpu", "--no-progress", "--no-tensorboard", "--eval-interval", "0", "--eval-batches", "1",
            "--ckpt-interval", "0", "--log-interval", str(steps), "--peak-flops", "1e12", "--json"]
    if nproc > 1:
        args[4:4] = ["--nproc", str(nproc), "--strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({nproc} processes):\n{proc.stderr[-3000:]}")
    return float(json.loads(proc.stdout)["tokens_per_s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2, help="DDP processes (each gets cores/nproc threads)")
    ap.add_argument("--batch", type=int, default=8, help="global batch (sequences of 256 tokens) per step")
    ap.add_argument("--steps", type=int, default=20, help="training steps per run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (the median counts)")
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="hwlm-ddp-speed-"))
    data = make_data(work, vocab=4096) if not (work / "data" / "manifest.json").exists() else work / "data"
    single, ddp = [], []
    for r in range(args.rounds):
        single.append(run(data, work / f"one-{r}", 1, args.batch, args.steps, cores))
        ddp.append(run(data, work / f"ddp-{r}", args.nproc, args.batch, args.steps, max(1, cores // args.nproc)))
    one, many = statistics.median(single), statistics.median(ddp)
    print(f"| case | tokens/s (median of {args.rounds}) |\n|---|---|")
    print(f"| 1 process, {cores} threads | {one:,.0f} |")
    print(f"| {args.nproc} processes (DDP, gloo), {max(1, cores // args.nproc)} thread(s) each | {many:,.0f} |")
    print(f"\nratio DDP / one process: {many / one:.3f} (target >= 0.85); mid model, global batch {args.batch} x 256, "
          f"{args.steps} steps per run, {cores} cores; work dir {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
