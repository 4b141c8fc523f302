"""Training speed of hwlm's Transformer against ``transformers.GPT2LMHeadModel`` on the CPU.

One training step = forward + backward + AdamW step + zeroing the gradients, on random tokens
(speed does not depend on their values). Both models have the same shape, float32 weights,
the same thread count and the same optimizer: ``torch.optim.AdamW(fused=True)``, which is what
``transformers.Trainer`` uses by default with torch >= 2.8 (``adamw_torch_fused``), so the ratio
measures the models, not the optimizers. Runs are interleaved (hwlm, HF, hwlm, HF, ...) so
that noise from other processes hits both alike; the table shows medians.

MFU = training FLOP/s (``hwlm.formulas.train_flops_per_token``, the same for both models) over
a peak measured here: the median FLOP/s of large square float32 matmuls.

    python benchmarks/train_speed.py                       # tiny and mid, float32, 1 and 2 threads
    python benchmarks/train_speed.py --configs tiny --threads 1 --clock cpu   # steadier on a shared machine
    python benchmarks/train_speed.py --configs tiny --bf16 --compile --json runs/train_speed.json

On a machine that other processes share, ``--clock cpu`` (this process's CPU time) is steady at
one thread; with more threads it also counts OpenMP threads spinning while they wait for a core,
so the default wall clock with interleaved medians is the honest measure there. The machine line
prints the load average before and after, so a reader can tell how quiet the run was.

``--bf16`` adds rows with ``torch.autocast("cpu", torch.bfloat16)`` for both (MFU against a
measured bf16 peak); ``--compile`` adds a ``torch.compile``d hwlm row (compile time printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from hwlm.formulas import mfu, train_flops_per_token
from hwlm.train.runtime import keep_freed_memory  # the same allocator setting hwlm train uses on a CPU
from hwlm.model import ModelConfig, Transformer


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    """Best FLOP/s of an n x n x n matmul at the current thread count: the practical peak for MFU.

    The best, not the median: other processes can only slow a repeat down, and a peak measured
    low would inflate every MFU.
    """
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


def hf_model(cfg: ModelConfig) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hc = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                    n_head=cfg.n_head, n_inner=cfg.d_ff, layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0,
                    embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                    tie_word_embeddings=cfg.tie_embeddings)
    return GPT2LMHeadModel(hc).train()


@dataclass
class Runner:
    """A training step to time, and the step times measured so far."""

    name: str
    step: Callable[[], None]
    times: list[float] = field(default_factory=list)

    def tokens_per_s(self, tokens: int) -> float:
        return tokens / statistics.median(self.times)


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, hf: bool, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step() -> None:
        with autocast():
            loss = model(x, labels=y).loss if hf else model(x, y, return_logits=False)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def time_interleaved(runners: list[Runner], repeats: int, min_time: float, clock: Callable[[], float]) -> None:
    for r in runners:  # warm up (allocations, lazy init, compilation)
        r.step()
        r.step()
    t = clock()
    runners[0].step()
    steps = max(1, round(min_time / max(clock() - t, 1e-6)))
    for _ in range(repeats):
        for r in runners:
            t = clock()
            for _ in range(steps):
                r.step()
            r.times.append((clock() - t) / steps)


def bench_config(name: str, args: argparse.Namespace, threads: int, peaks: dict[str, float]) -> list[dict]:
    cfg = ModelConfig.from_name(name, vocab_size=args.vocab)
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size))
    y = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size))
    runners = [Runner("hwlm", make_step(Transformer(cfg).train(), x, y, False, False)),
               Runner("HF", make_step(hf_model(cfg), x, y, True, False))]
    if args.bf16:
        runners += [Runner("hwlm bf16", make_step(Transformer(cfg).train(), x, y, False, True)),
                    Runner("HF bf16", make_step(hf_model(cfg), x, y, True, True))]
    if args.compile:
        t = time.perf_counter()
        compiled = torch.compile(Transformer(cfg).train())
        step = make_step(compiled, x, y, False, False)
        step()
        print(f"{name}: torch.compile of hwlm took {time.perf_counter() - t:.1f} s (first step included)")
        runners.append(Runner("hwlm compiled", step))
    # CPU time over the thread count: equal to wall time when every thread is busy all along.
    clock = (lambda: time.process_time() / threads) if args.clock == "cpu" else time.perf_counter
    time_interleaved(runners, args.repeats, args.min_time, clock)
    tokens = args.batch * cfg.block_size
    flops = train_flops_per_token(cfg.to_arch(), cfg.block_size)
    return [{"config": name, "threads": threads, "runner": r.name, "tokens_per_s": r.tokens_per_s(tokens),
             "mfu": mfu(r.tokens_per_s(tokens), flops, peaks["bf16" if "bf16" in r.name else "fp32"]),
             "step_s": statistics.median(r.times), "samples_s": r.times} for r in runners]


def markdown(rows: list[dict]) -> str:
    out = ["| config | threads | hwlm tok/s | HF tok/s | ratio | hwlm MFU | HF MFU |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    by = {(r["config"], r["threads"], r["runner"]): r for r in rows}
    for config, threads in dict.fromkeys((r["config"], r["threads"]) for r in rows):
        for suffix in ("", " bf16"):
            ours, theirs = by.get((config, threads, "hwlm" + suffix)), by.get((config, threads, "HF" + suffix))
            if ours and theirs:
                out.append(f"| {config}{suffix} | {threads} | {ours['tokens_per_s']:,.0f} | "
                           f"{theirs['tokens_per_s']:,.0f} | {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x | "
                           f"{ours['mfu']:.1%} | {theirs['mfu']:.1%} |")
        if (config, threads, "hwlm compiled") in by:
            r, hf = by[(config, threads, "hwlm compiled")], by[(config, threads, "HF")]
            out.append(f"| {config} (hwlm compiled) | {threads} | {r['tokens_per_s']:,.0f} | | "
                       f"{r['tokens_per_s'] / hf['tokens_per_s']:.2f}x | {r['mfu']:.1%} | |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,mid", help="comma-separated hwlm presets (gpt2 flavour)")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary size (hwlm prepare's default is 4096)")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (2 = a 2-core CI machine)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per runner (median reported)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per timed repeat (sets steps per repeat)")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast for both")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(hwlm)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this process's CPU time, steadier on a shared machine with --threads 1")
    p.add_argument("--json", help="write all samples to this JSON file")
    p.add_argument("--no-keep-freed-memory", dest="keep_memory", action="store_false",
                   help="leave glibc malloc's defaults (mmap per large tensor, page faults every step)")
    args = p.parse_args()
    if args.keep_memory and not keep_freed_memory():
        print("note: could not tune glibc malloc (not glibc?); measuring with the defaults")
    load_before = os.getloadavg()
    rows, peak_text = [], []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        peaks = {"fp32": matmul_peak(torch.float32)}
        if args.bf16:
            peaks["bf16"] = matmul_peak(torch.bfloat16)
        peak_text.append(f"{threads} thread(s): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()))
        rows += [r for name in args.configs.split(",") for r in bench_config(name, args, threads, peaks)]
    import transformers

    machine = (f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, transformers "
               f"{transformers.__version__}, malloc keeps freed memory: {args.keep_memory}, measured matmul peak "
               f"(GFLOP/s) {'; '.join(peak_text)}, load average (1 min) {load_before[0]:.2f} before, "
               f"{os.getloadavg()[0]:.2f} after")
    print(f"\nTraining step (fwd+bwd+AdamW fused), batch {args.batch}, vocab {args.vocab}, "
          f"median of {args.repeats}, {args.clock} clock\n")
    print(markdown(rows))
    print(f"\nMachine: {machine}")
    if args.json:
        from hwlm.io import atomic_write_json
        atomic_write_json(args.json, {"machine": machine, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
