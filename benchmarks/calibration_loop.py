"""The calibration loop on this machine, timed: does a this-machine calibration predict another workload?

``hwlm bench peak`` + ``hwlm bench train`` (tiny model, batch 8 x 64) -> ``hwlm bench calibrate --hardware
this-machine`` -> ``hwlm plan train --calibration`` predicts a different workload (batch 16 x 32: same tokens
per step, another shape and attention FLOP count), compared with that workload's own bench record, beside
the uncalibrated priors' prediction on the same measured peaks. The two workloads alternate twice and the
faster record of each is kept: other processes on a shared machine only slow runs down. (This was a test;
tests never time things, so the timing comparison lives here and the test keeps the plumbing.)

    flock /tmp/hwlm-bench.lock .venv/bin/python benchmarks/calibration_loop.py [--out runs/bench/calibration-loop]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
from contextlib import redirect_stdout
from pathlib import Path

BENCH = ["--device", "cpu", "--energy", "off", "--model", "tiny", "--steps", "6", "--warmup", "2"]


def _run(args: list[str]) -> str:
    from hwlm.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        if main(args) != 0:
            raise SystemExit(f"hwlm {' '.join(args)} failed")
    return out.getvalue()


def main() -> None:
    from hwlm.bench.records import load_record
    from hwlm.plan import estimate_training
    from hwlm.plan.machine import device_from_calibration
    from hwlm.plan.models import trainable_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/calibration-loop"))
    tmp = ap.parse_args().out
    tmp.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    peak = tmp / "peak.json"
    _run(["bench", "peak", "--device", "cpu", "--dtypes", "fp32", "--size", "256", "--repeats", "5",
          "--membw-mib", "32", "--energy", "off", "--out", str(peak)])
    calib, target = [], []
    for i in range(2):
        for batch, seq, into in ((8, 64, calib), (16, 32, target)):
            path = tmp / f"train-b{batch}-{i}.json"
            _run(["bench", "train", *BENCH, "--batch", str(batch), "--seq", str(seq), "--peak-record", str(peak),
                  "--out", str(path)])
            into.append(path)
    cal = tmp / "calibration.json"
    _run(["bench", "calibrate", str(peak), *map(str, calib), "--hardware", "this-machine", "--out", str(cal)])
    rec = max((load_record(p) for p in target), key=lambda r: r["summary"]["tokens_per_s"])
    cfg = rec["config"]
    tokens = cfg["batch"] * cfg["seq"] * 10
    plan = json.loads(_run(["plan", "train", "--model", "tiny", "--calibration", str(cal), "--tokens", str(tokens),
                            "--precision", "fp32", "--seq-len", str(cfg["seq"]), "--global-batch", str(cfg["batch"]),
                            "--micro-batch", str(cfg["batch"]), "--tp", "1", "--pp", "1", "--zero-stage", "0",
                            "--recompute", "none", "--json"]))
    calibrated = tokens / (plan["time_s"] - plan["overhead_time_s"])  # steps alone, as the bench times them
    e = estimate_training(trainable_model("tiny", block_size=64), tokens, device_from_calibration(cal), 1,
                          precision="fp32", seq_len=cfg["seq"], global_batch=cfg["batch"], micro_batch=cfg["batch"],
                          tp=1, pp=1, zero_stage=0, recompute="none", find_smallest=False)
    prior = tokens / (e.time_s - e.overhead_time_s)
    measured = rec["summary"]["tokens_per_s"]
    spread = rec["summary"]["step_s_p90"] / rec["summary"]["step_s_p50"] - 1
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
          f"load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| workload | measured tokens/s | calibrated prediction | priors' prediction | step-time spread p90/p50 |")
    print("|---|---|---|---|---|")
    print(f"| tiny, batch {cfg['batch']} x {cfg['seq']} | {measured:,.0f} | {calibrated:,.0f} "
          f"({calibrated / measured - 1:+.0%}) | {prior:,.0f} ({prior / measured - 1:+.0%}) | {spread:+.0%} |")


if __name__ == "__main__":
    main()
