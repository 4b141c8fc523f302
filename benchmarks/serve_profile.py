"""Where an engine step's time goes under a closed loop of C clients, in one process (no HTTP).

Builds the engine as ``hwlm serve`` does (``worker._build``: the same run, back end, precision
and slots), keeps ``--clients`` clients looping (a finished sequence's client sends its next
request 0.5-1.5 x ``--round-trip-ms`` later, as over HTTP) until ``--requests`` have finished,
and times each step's parts: the forward (``runner.step``), the greedy argmax, sampling and text
(``_accept``, events), and the step message (pickled as the worker sends it). For the hybrid it
also counts lone (onnxruntime) steps, batched steps, and how often a step flips between the two.
``--torch-profile`` adds torch.profiler's table of the forward's ops (record_shapes) for steps
at full batch; ``--kernels`` times only the A/B choices of the packed bf16 step (prepacked
against ``F.linear``, fp32 against bf16 attention, the greedy reduction, the module path against
the packed step at 8 rows and alone), at 1 and 2 threads.

    .venv/bin/python benchmarks/serve_profile.py --run runs/serve-bench/mid --dtype bf16 --clients 8
    .venv/bin/python benchmarks/serve_profile.py --run runs/serve-bench/mid --backend auto --dtype auto \\
        --onnx runs/serve-bench/mid-onnx --clients 8
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path


def kernels(run: Path, threads: int) -> None:
    """The A/B timings behind the packed bf16 step's choices, at 8 rows of ``run``'s model (median of 50)."""
    import torch
    import torch.nn.functional as F

    from hwlm.model.packing import packed_weight, unpack_linears
    from hwlm.serve.engine.model_runner import ModelRunner
    from hwlm.train.load import load_model

    torch.set_num_threads(threads)

    def ms(fn, n: int = 50) -> float:
        for _ in range(5):
            fn()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3

    model = load_model(run).model.to(torch.bfloat16).eval()
    packed = ModelRunner(model, 32)
    with torch.inference_mode():
        for name, layer in (("output layer", model.lm_head), ("c_fc", model.h[0].mlp.c_fc)):
            w = packed_weight(layer)
            xin = torch.randn(8, layer.in_features, dtype=torch.bfloat16)
            plain = ms(lambda: F.linear(xin, layer.weight, layer.bias))
            pre = ms(lambda: torch.ops.mkldnn._linear_pointwise(xin, w, layer.bias, "none", [], ""))
            print(f"  {name} {tuple(layer.weight.shape)} at 8 rows: F.linear {plain:.3f} ms, packed {pre:.3f} ms")
        H, D, L = model.cfg.n_head, model.cfg.head_dim, 80
        q, k = torch.randn(8, H, 1, D), torch.randn(8, H, L, D)
        mask = torch.ones(8, 1, 1, L, dtype=torch.bool)
        qb, kb = q.bfloat16(), k.bfloat16()
        bf16 = ms(lambda: F.scaled_dot_product_attention(qb, kb, kb, attn_mask=mask))
        fp32 = ms(lambda: F.scaled_dot_product_attention(q, k, k, attn_mask=mask))
        print(f"  SDPA 8 rows x {L} keys: bf16 {bf16:.3f} ms, fp32 {fp32:.3f} ms")
        logits = torch.randn(8, model.cfg.vocab_size, dtype=torch.bfloat16)
        print(f"  greedy over 8 x {model.cfg.vocab_size} bf16: argmax {ms(lambda: logits.argmax(-1)):.3f} ms, "
              f"float().argmax {ms(lambda: logits.float().argmax(-1)):.3f} ms, max().indices "
              f"{ms(lambda: logits.max(-1).indices):.3f} ms")
        old = ModelRunner(copy.deepcopy(model), 32)  # the module path with a bf16 cache, as before session 5
        unpack_linears(old.model)
        old.packed, old.kv_dtype, old.state = 0, torch.bfloat16, old.model.decode_state()
        from hwlm.model import KVCache

        old.cache = KVCache(model.cfg, batch_size=32, dtype=torch.bfloat16)
        old.views = [old._slot_view(s) for s in range(32)]
        for r in (old, packed):
            for s in range(8):
                r.prefill([5] * 40, s, 0)
        rows = [([7], s, 40) for s in range(8)]
        print(f"  step of 8 rows: module path, bf16 cache {ms(lambda: old.step(rows), 30):.2f} ms; packed, fp32 cache "
              f"{ms(lambda: packed.step(rows), 30):.2f} ms")
        print(f"  lone row: decode_step {ms(lambda: old.step([([7], 0, 40)]), 30):.2f} ms; packed step "
              f"{ms(lambda: packed.step([([7], 0, 40)]), 30):.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--onnx", type=Path, default=None)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--round-trip-ms", type=float, default=3.0,
                    help="a client's next request arrives this long after its last one finished")
    ap.add_argument("--engine-threads", type=int, default=0, help="hwlm serve --engine-threads (0: its default)")
    ap.add_argument("--lone-threads", type=int, default=0, help="hwlm serve --lone-threads (0: its default)")
    ap.add_argument("--torch-profile", action="store_true")
    ap.add_argument("--kernels", action="store_true", help="only the kernel A/B timings, at 1 and 2 threads")
    a = ap.parse_args()
    if a.kernels:
        for threads in (1, 2):
            print(f"{threads} thread(s):")
            kernels(a.run, threads)
        print(f"load average {os.getloadavg()[0]:.2f}")
        return 0

    import torch

    from hwlm.serve.config import ServeConfig
    from hwlm.serve.engine.sequence import SamplingParams, Sequence
    from hwlm.serve.engine.worker import _build, event_tuple

    threads = {"engine_threads": a.engine_threads} if a.engine_threads else {}  # 0: hwlm serve's default
    threads |= {"lone_threads": a.lone_threads} if a.lone_threads else {}
    cfg = ServeConfig(run=a.run, backend=a.backend, dtype=a.dtype, onnx=a.onnx, max_num_seqs=a.slots,
                      max_waiting=256, auth=False, **threads)
    t0 = time.perf_counter()
    engine, recorder, info = _build(cfg)
    print(f"built in {time.perf_counter() - t0:.1f} s: {info['backend']} {info['dtype']}, {info['threads']} threads, "
          f"{info['lone_threads']} for a lone row")
    tok = engine.tokenizer
    prompts = [tok.encode(p) for p in ("The cat sat on the", "A dog ran to the park while",
                                       "Because it was a warm day", "The bird sang over")]
    prompts = [p.ids if hasattr(p, "ids") else p for p in prompts]
    parts: dict[str, list[float]] = {k: [] for k in ("step", "forward", "accept", "message")}
    rows_seen, paths = Counter(), []
    runner, pending, done = engine.runner, [], [0]
    forward = runner.step

    def timed_forward(rows):
        t = time.perf_counter()
        out = forward(rows)
        parts["forward"].append(time.perf_counter() - t)
        rows_seen[len(rows)] += 1
        paths.append("lone" if len(rows) == 1 and getattr(runner, "single_in_onnx", False) else "batch")
        return out

    runner.step = timed_forward
    accept = engine._accept

    def timed_accept(seq, row, greedy=None):
        t = time.perf_counter()
        accept(seq, row, greedy)
        parts["accept"][-1] += time.perf_counter() - t

    engine._accept = timed_accept
    issued = [0]

    def submit() -> None:
        i = issued[0]
        issued[0] += 1
        seq = Sequence(prompts[i % len(prompts)], SamplingParams(max_tokens=a.tokens, temperature=0.0), emit,
                       lambda ids: tok.decode(ids, skip_special_tokens=False), deadline=time.monotonic() + 600)
        engine.scheduler.add(seq)

    rng = random.Random(0)
    due: list[float] = []  # when the next requests arrive (a client's round trip after its last finished)

    def emit(ev) -> None:
        pending.append(event_tuple(0, ev))
        if ev.finish_reason is not None:
            done[0] += 1
            if issued[0] + len(due) < a.requests:
                due.append(time.perf_counter() + rng.uniform(0.5, 1.5) * a.round_trip_ms / 1e3)

    def run_loop(requests: int) -> None:
        for _ in range(min(a.clients, requests)):
            submit()
        while engine.scheduler.running or engine.scheduler.waiting or due:
            now = time.perf_counter()
            if not (engine.scheduler.running or engine.scheduler.waiting):
                time.sleep(max(0.0, min(due) - now))  # idle until the next client comes back
                now = time.perf_counter()
            for t_due in [d for d in due if d <= now]:
                due.remove(t_due)
                submit()
            if not (engine.scheduler.running or engine.scheduler.waiting):
                continue
            t = time.perf_counter()
            parts["accept"].append(0.0)
            engine.step()
            tm = time.perf_counter()
            pickle.dumps(("step", list(pending), (1, 0, 0.0), recorder.take()))
            pending.clear()
            parts["message"].append(time.perf_counter() - tm)
            parts["step"].append(time.perf_counter() - t)

    with torch.inference_mode():
        a_requests, a.requests = a.requests, a.clients  # warm-up: one wave
        run_loop(a.clients)
        for v in parts.values():
            v.clear()
        rows_seen.clear(), paths.clear()
        a.requests, issued[0] = a_requests, 0
        switches0 = engine.thread_switches
        t = time.perf_counter()
        run_loop(a.requests)
        wall = time.perf_counter() - t
    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    total = sum(parts["step"])
    print(f"{len(parts['step'])} steps, {a.requests * a.tokens / wall:.0f} tokens/s in-process, "
          f"steps by rows: {dict(sorted(rows_seen.items()))}")
    flips = sum(1 for p, q in zip(paths, paths[1:]) if p != q)
    print(f"lone steps {paths.count('lone')}, batched {paths.count('batch')}, flips {flips}; engine thread "
          f"switches {engine.thread_switches - switches0} ({(engine.thread_switches - switches0) / len(parts['step']):.1%}"
          f" of steps)" + (f"; lone decode steps by threads {engine.lone.runs}, medians (ms) "
                           f"{ {c: round(statistics.median(t) * 1e3, 2) for c, t in engine.lone.times.items() if t} }"
                           if engine.lone else ""))
    for k, v in parts.items():
        print(f"  {k:8s} median {ms(v):6.2f} ms  share of step time {sum(v) / total:6.1%}")
    if a.torch_profile:
        from torch.profiler import ProfilerActivity, profile

        rows = [([1], s, 40 + s) for s in range(a.clients)]
        with torch.inference_mode():
            for s in range(a.clients):
                forward([([0] * 40, s, 0)])
            for _ in range(3):
                forward(rows)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(20):
                    logits = forward(rows)
                    logits.float().argmax(-1).tolist()
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20,
                                                                  max_name_column_width=40, max_shapes_column_width=60))
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
