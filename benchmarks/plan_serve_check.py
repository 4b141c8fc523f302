"""Check ``hwlm plan serve`` against hwlm's own continuous-batching engine, measured on this machine.

The engine of ``hwlm serve`` (``hwlm.serve.engine.LLMEngine``, in-process: no HTTP, so the comparison is
of the batching loop and its steps) runs a closed loop of C users on a randomly initialised preset
(greedy, no end-of-text, so every request runs its full length); the planner predicts the same load with
``--hardware this-machine --calibration FILE`` from ``hwlm bench peak`` + ``hwlm bench infer`` records
taken in the same run. Prints a table (measured, predicted, ratio) and writes it as JSON.

    flock /tmp/hwlm-bench.lock python benchmarks/plan_serve_check.py --out runs/plan-serve-check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from hwlm.io import atomic_write_text
from hwlm.model.config import ModelConfig
from hwlm.model.transformer import Transformer
from hwlm.plan import ServingJob, estimate_serving
from hwlm.serve.engine import EngineConfig, LLMEngine, SamplingParams, Sequence


def calibrate(out: Path, preset: str, prompt: int) -> Path:
    """This machine's calibration file from a peak and an infer record (the documented flow)."""
    hwlm = [str(Path(sys.executable).with_name("hwlm"))]
    peak, infer, cal = out / "peak.json", out / "infer.json", out / "calibration.json"
    subprocess.run(hwlm + ["bench", "peak", "--device", "cpu", "--dtypes", "fp32", "--out", str(peak)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(hwlm + ["bench", "infer", "--device", "cpu", "--model", preset, "--batch-sizes", "1,8",
                           "--prompt-lens", str(prompt), "--new-tokens", "16", "--out", str(infer)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(hwlm + ["bench", "calibrate", str(peak), str(infer), "--hardware", "this-machine", "--out", str(cal)],
                   check=True, stdout=subprocess.DEVNULL)
    return cal


def measure(model: Transformer, users: int, prompt: int, gen: int, requests: int, cfg: EngineConfig) -> dict:
    """Closed loop: ``users`` requests in flight, each finished one replaced at once, until ``requests`` end."""
    engine = LLMEngine(model, tokenizer=None, eot_id=None, cfg=cfg)
    engine.start()
    lock, done_all = threading.Lock(), threading.Event()
    stats = {"issued": 0, "done": 0, "ttft": [], "itl": [], "t0": time.monotonic()}
    vocab = model.cfg.vocab_size

    def new_request() -> None:
        with lock:
            if stats["issued"] >= requests:
                return
            stats["issued"] += 1
            k = stats["issued"]
        ids = [(k * 7919 + i * 31) % vocab for i in range(prompt)]
        times: list[float] = []
        start = time.monotonic()

        def emit(ev) -> None:
            times.append(time.monotonic())
            if ev.finish_reason is None:
                return
            with lock:
                stats["done"] += 1
                stats["ttft"].append(times[0] - start)
                stats["itl"].extend(b - a for a, b in zip(times, times[1:]))
                finished = stats["done"] >= requests
            if finished:
                stats["t1"] = time.monotonic()
                done_all.set()
            else:
                new_request()

        engine.submit([Sequence(ids, SamplingParams(max_tokens=gen, temperature=0.0), emit, lambda t: "")])

    for _ in range(users):
        new_request()
    done_all.wait(timeout=600)
    engine.stop()
    elapsed = stats["t1"] - stats["t0"]
    return {"output_tokens_per_s": requests * gen / elapsed, "ttft_p50_s": statistics.median(stats["ttft"]),
            "itl_p50_s": statistics.median(stats["itl"]), "requests": requests}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/plan-serve-check"))
    ap.add_argument("--preset", default="mid")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--users", default="1,4,16")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cal = calibrate(a.out, a.preset, a.prompt_len)
    model = Transformer(ModelConfig.from_name(a.preset)).eval()
    cfg = EngineConfig()  # hwlm serve's defaults: max_num_seqs 32, prefill_budget 512
    rows = []
    for users in (int(u) for u in a.users.split(",")):
        n = max(3 * users, 8)
        got = measure(model, users, a.prompt_len, a.gen_len, n, cfg)
        est = estimate_serving(ServingJob(model=a.preset, hardware="this-machine", calibration=str(cal),
                                          concurrency=users, prompt_len=a.prompt_len, gen_len=a.gen_len,
                                          precision="fp32", engine="hwlm", requests=max(200, 10 * users)))
        pred = {"output_tokens_per_s": est.output_tokens_per_s, "ttft_p50_s": est.ttft_p50_s,
                "itl_p50_s": est.itl_p50_s}
        rows.append({"users": users, "measured": got, "predicted": pred,
                     "ratio": {k: pred[k] / got[k] for k in pred}})
    record = {"kind": "hwlm-plan-serve-check", "version": 1, "preset": a.preset, "prompt_len": a.prompt_len,
              "gen_len": a.gen_len, "machine": {"cpu": platform.processor() or platform.machine(),
                                                "cores": os.cpu_count(), "loadavg": os.getloadavg(),
                                                "torch_threads": torch.get_num_threads()},
              "engine": {"max_num_seqs": cfg.max_num_seqs, "prefill_budget": cfg.prefill_budget}, "rows": rows}
    atomic_write_text(a.out / "plan-serve-check.json", json.dumps(record, indent=2))
    print(f"{a.preset}, prompt {a.prompt_len}, gen {a.gen_len}; load {os.getloadavg()[0]:.2f}")
    print("| users | tokens/s measured | predicted | ratio | TTFT p50 measured | predicted | ITL p50 measured | "
          "predicted | ratio |")
    for r in rows:
        m, p, q = r["measured"], r["predicted"], r["ratio"]
        print(f"| {r['users']} | {m['output_tokens_per_s']:.0f} | {p['output_tokens_per_s']:.0f} | "
              f"{q['output_tokens_per_s']:.2f} | {m['ttft_p50_s'] * 1e3:.1f} ms | {p['ttft_p50_s'] * 1e3:.1f} ms | "
              f"{m['itl_p50_s'] * 1e3:.2f} ms | {p['itl_p50_s'] * 1e3:.2f} ms | {q['itl_p50_s']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
