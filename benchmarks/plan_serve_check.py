"""Check ``hwlm plan serve`` against hwlm's own continuous-batching engine, measured on this machine.

The engine of ``hwlm serve`` (``hwlm.serve.engine.LLMEngine``, in-process: no HTTP, so the comparison is
of the batching loop and its steps) runs a closed loop of C users on a randomly initialised preset
(greedy, no end-of-text, so every request runs its full length); the planner predicts the same load with
``--hardware this-machine --calibration FILE`` from ``hwlm bench peak`` + ``hwlm bench infer`` records
taken in the same run, before and after the engine runs (``bench calibrate`` keeps each rate's best; the
infer grid runs batches 1 to 32, the calibration's decode and prefill curves by rows). Prints a table
(measured, predicted, ratio) and writes it as JSON.

It also times every engine step (``ModelRunner.step``, wrapped here) with what it ran, and prices the same
rows with the planner's step model (``hwlm.plan.serve_step.StepModel.seconds``): a profile of where the
prediction and the engine part, by kind of step (decode rows only, or decode rows with prompt chunks).

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
from hwlm.plan.jobs import resolve_hardware
from hwlm.plan.models import get_model
from hwlm.plan.serve_step import step_model
from hwlm.plan.software import ENGINES
from hwlm.serve.engine import EngineConfig, LLMEngine, SamplingParams, Sequence


def bench_records(out: Path, preset: str, prompt: int, tag: str) -> list[Path]:
    """A peak and an infer record of this machine (the documented flow), named by ``tag``."""
    hwlm = [str(Path(sys.executable).with_name("hwlm"))]
    peak, infer = out / f"peak{tag}.json", out / f"infer{tag}.json"
    subprocess.run(hwlm + ["bench", "peak", "--device", "cpu", "--dtypes", "fp32", "--out", str(peak)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(hwlm + ["bench", "infer", "--device", "cpu", "--model", preset, "--batch-sizes", "1,2,4,8,16,32",
                           "--prompt-lens", str(prompt), "--new-tokens", "16", "--out", str(infer)], check=True,
                   stdout=subprocess.DEVNULL)
    return [peak, infer]


def calibrate(out: Path, records: list[Path]) -> Path:
    """This machine's calibration file from the records (``bench calibrate`` keeps each rate's best)."""
    hwlm = [str(Path(sys.executable).with_name("hwlm"))]
    cal = out / "calibration.json"
    subprocess.run(hwlm + ["bench", "calibrate", *map(str, records), "--hardware", "this-machine", "--out", str(cal)],
                   check=True, stdout=subprocess.DEVNULL)
    return cal


def measure(model: Transformer, users: int, prompt: int, gen: int, requests: int, cfg: EngineConfig) -> dict:
    """Closed loop: ``users`` requests in flight, each finished one replaced at once, until ``requests`` end."""
    engine = LLMEngine(model, tokenizer=None, eot_id=None, cfg=cfg)
    steps: list[tuple[list[tuple[int, int]], float, float]] = []  # ([(tokens, start) per row], forward s, step s)
    inner, inner_step = engine.runner.step, engine.step

    def timed(rows):
        t0 = time.perf_counter()
        out = inner(rows)
        steps.append(([(len(tokens), start) for tokens, _, start in rows], time.perf_counter() - t0, 0.0))
        return out

    def timed_step() -> None:  # the whole engine step: scheduling, the forward, sampling, the events
        t0, n = time.perf_counter(), len(steps)
        inner_step()
        if len(steps) > n:
            steps[-1] = (*steps[-1][:2], time.perf_counter() - t0)

    engine.runner.step, engine.step = timed, timed_step
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
                engine.stop()  # from the engine's own loop: it returns after this step
            else:
                new_request()

        engine.submit([Sequence(ids, SamplingParams(max_tokens=gen, temperature=0.0), emit, lambda t: "")])

    for _ in range(users):
        new_request()
    # The engine loops in this thread, where the model was built, as in hwlm serve's worker: an engine
    # thread beside a main thread that had run torch ops would be a second OpenMP team (LLMEngine.run).
    watchdog = threading.Timer(600, engine.stop)
    watchdog.start()
    engine.run()
    watchdog.cancel()
    if not done_all.is_set():
        raise SystemExit(f"{users} users: the engine did not finish {requests} requests in 600 s")
    elapsed = stats["t1"] - stats["t0"]
    return {"output_tokens_per_s": requests * gen / elapsed, "ttft_p50_s": statistics.median(stats["ttft"]),
            "itl_p50_s": statistics.median(stats["itl"]), "requests": requests, "steps": steps}


def step_profile(steps: list, cal: Path, preset: str, prompt: int, gen: int) -> list[dict]:
    """Measured engine steps against the planner's price for the same rows, by kind of step."""
    job = ServingJob(model=preset, hardware="this-machine", calibration=str(cal), concurrency=1, prompt_len=prompt,
                     gen_len=gen, precision="fp32", engine="hwlm")
    sm = step_model(job, get_model(preset), resolve_hardware(job.hardware, job.calibration), ENGINES["hwlm"])
    kinds: dict[str, list[tuple[float, float, float]]] = {}
    for rows, seconds, whole in steps:
        dec = [s + 1 for n, s in rows if n == 1 and s > 0]  # a decode row's context, its new token included
        chunks = [(n, s) for n, s in rows if not (n == 1 and s > 0)]
        pred = sm.forward_seconds(len(dec), float(sum(dec)), chunks, max_ctx=max(dec, default=0))
        host = sm.seconds(len(dec), float(sum(dec)), chunks, max_ctx=max(dec, default=0)) - pred  # the engine's work
        b = len(dec)
        band = "0" if b == 0 else "1" if b == 1 else "2-4" if b <= 4 else "5-8" if b <= 8 else "9-16" if b <= 16 \
            else "17-32"
        # one prompt alone is the model's own forward; several are packed with padded attention
        extra = "" if not chunks else " + 1 prompt chunk" if len(chunks) == 1 else " + 2+ prompt chunks"
        kinds.setdefault(f"{band} decode rows{extra}", []).append((seconds, pred, whole - seconds, host))
    out = []
    for kind, v in sorted(kinds.items()):
        m, p = statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)
        out.append({"kind": kind, "steps": len(v), "measured_s": m, "predicted_s": p, "ratio": p / m,
                    "host_s": statistics.median(x[2] for x in v),
                    "host_predicted_s": statistics.median(x[3] for x in v)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/plan-serve-check"))
    ap.add_argument("--preset", default="mid")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--users", default="1,4,8,16,32")
    ap.add_argument("--calibration", type=Path, help="reuse this calibration file instead of measuring one")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    # Records before and after the engine runs: a rate that a burst of load slowed in one is taken from the other.
    records = [] if a.calibration else bench_records(a.out, a.preset, a.prompt_len, "")
    model = Transformer(ModelConfig.from_name(a.preset)).eval()
    cfg = EngineConfig()  # hwlm serve's defaults: max_num_seqs 32, prefill_budget 512
    rows, all_steps = [], []
    load_before = os.getloadavg()
    measured = []
    for users in (int(u) for u in a.users.split(",")):
        got = measure(model, users, a.prompt_len, a.gen_len, max(3 * users, 8), cfg)
        all_steps += got.pop("steps")
        measured.append((users, got))
    load_after = os.getloadavg()
    cal = a.calibration or calibrate(a.out, records + bench_records(a.out, a.preset, a.prompt_len, "-after"))
    for users, got in measured:
        est = estimate_serving(ServingJob(model=a.preset, hardware="this-machine", calibration=str(cal),
                                          concurrency=users, prompt_len=a.prompt_len, gen_len=a.gen_len,
                                          precision="fp32", engine="hwlm", requests=max(200, 10 * users)))
        pred = {"output_tokens_per_s": est.output_tokens_per_s, "ttft_p50_s": est.ttft_p50_s,
                "itl_p50_s": est.itl_p50_s}
        rows.append({"users": users, "measured": got, "predicted": pred,
                     "ratio": {k: pred[k] / got[k] for k in pred}})
    record = {"kind": "hwlm-plan-serve-check", "version": 1, "preset": a.preset, "prompt_len": a.prompt_len,
              "gen_len": a.gen_len, "machine": {"cpu": platform.processor() or platform.machine(),
                                                "cores": os.cpu_count(), "loadavg_before": load_before,
                                                "loadavg_after_engine": load_after, "loadavg": os.getloadavg(),
                                                "torch_threads": torch.get_num_threads()},
              "engine": {"max_num_seqs": cfg.max_num_seqs, "prefill_budget": cfg.prefill_budget}, "rows": rows,
              "step_profile": step_profile(all_steps, cal, a.preset, a.prompt_len, a.gen_len)}
    atomic_write_text(a.out / "plan-serve-check.json", json.dumps(record, indent=2))
    print(f"{a.preset}, prompt {a.prompt_len}, gen {a.gen_len}; load {load_before[0]:.2f} before the engine runs, "
          f"{load_after[0]:.2f} after them, {os.getloadavg()[0]:.2f} at the end")
    print("| users | tokens/s measured | predicted | ratio | TTFT p50 measured | predicted | ITL p50 measured | "
          "predicted | ratio |")
    for r in rows:
        m, p, q = r["measured"], r["predicted"], r["ratio"]
        print(f"| {r['users']} | {m['output_tokens_per_s']:.0f} | {p['output_tokens_per_s']:.0f} | "
              f"{q['output_tokens_per_s']:.2f} | {m['ttft_p50_s'] * 1e3:.1f} ms | {p['ttft_p50_s'] * 1e3:.1f} ms | "
              f"{m['itl_p50_s'] * 1e3:.2f} ms | {p['itl_p50_s'] * 1e3:.2f} ms | {q['itl_p50_s']:.2f} |")
    print("\n| engine step | steps | forward p50 measured | planner's step model | ratio | rest of the engine step "
          "p50 | planner's price of it |\n|---|---|---|---|---|---|---|")
    for k in record["step_profile"]:
        print(f"| {k['kind']} | {k['steps']} | {k['measured_s'] * 1e3:.2f} ms | {k['predicted_s'] * 1e3:.2f} ms | "
              f"{k['ratio']:.2f} | {k['host_s'] * 1e3:.2f} ms | {k['host_predicted_s'] * 1e3:.2f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
