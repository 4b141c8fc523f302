"""Batch-1 decoding speed of ``hwlm.model.generate`` against ``transformers`` ``generate``.

1. ``tiny`` (4L/4H/128): tokens/s of hwlm's KV-cache loop and of HF ``GPT2LMHeadModel.generate``
   (``use_cache=True``, greedy), with the *same weights* (copied through hwlm's HF export
   mapping), so the two must emit the same tokens, which is checked.
2. ``gpt2-124m``: hwlm's decode tokens/s and the memory bandwidth it achieves: bytes of weights
   read per token (every parameter once, float32) x tokens/s, as a fraction of the copy
   bandwidth measured here (a large tensor copy, bytes read + written).

Runs are interleaved and the median is shown. Times include the prompt's prefill.

    python benchmarks/generate_speed.py                    # 1 and 2 threads, tiny and gpt2-124m
    python benchmarks/generate_speed.py --threads 1 --new-tokens 48 --skip-124m

Batch-1 decoding of the tiny model is a chain of small ops (``--ops`` counts the aten ops per
token of both loops with ``torch.profiler``), so on a machine shared with other processes the
2-thread rows suffer most (an OpenMP thread waits for a busy core at every op): read them with the
load average printed on the machine line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch

from hwlm.export.hf import hf_state_dict
from hwlm.model import ModelConfig, Transformer, generate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_speed import cpu_model  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def copy_bandwidth(n_bytes: int = 512 << 20, repeats: int = 5) -> float:
    """Median bytes/s of ``dst.copy_(src)`` counting bytes read plus bytes written."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * n_bytes / statistics.median(times)


def hf_twin(model: Transformer) -> torch.nn.Module:
    """A GPT2LMHeadModel holding exactly ``model``'s weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.cfg
    hc = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                    n_head=cfg.n_head, n_inner=cfg.d_ff, layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0,
                    embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None,
                    tie_word_embeddings=cfg.tie_embeddings)
    hf = GPT2LMHeadModel(hc).eval()
    missing, unexpected = hf.load_state_dict(hf_state_dict(model, cfg), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    return hf


def timed(fn: Callable[[], list[int]], repeats: int, runs: dict[str, list[float]], name: str) -> list[int]:
    t = time.perf_counter()
    out = fn()
    runs.setdefault(name, []).append(time.perf_counter() - t)
    return out


def bench_pair(model: Transformer, hf: torch.nn.Module | None, prompt: list[int], new: int,
               repeats: int) -> dict[str, float]:
    def ours() -> list[int]:
        return list(generate(model, prompt, new, temperature=0))

    def theirs() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              use_cache=True, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    fns = {"hwlm": ours} | ({"HF": theirs} if hf is not None else {})
    outs = {name: fn() for name, fn in fns.items()}  # warm-up, and the tokens to compare
    if "HF" in outs and outs["HF"] != outs["hwlm"]:
        print("warning: hwlm and HF greedy tokens differ (float round-off can flip near-ties)")
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            timed(fn, repeats, runs, name)
    return {name: new / statistics.median(times) for name, times in runs.items()}


def ops_per_token(model: Transformer, hf: torch.nn.Module, prompt: list[int], new: int) -> dict[str, float]:
    """Dispatched aten ops (nested ones included) per generated token, prefill included, for both loops."""
    from torch.profiler import ProfilerActivity, profile

    def count(fn: Callable[[], object]) -> float:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return sum(1 for e in prof.events() if e.name.startswith("aten::")) / new

    with torch.inference_mode():
        theirs = count(lambda: hf.generate(torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new,
                                           do_sample=False, use_cache=True, pad_token_id=0))
    return {"hwlm": count(lambda: list(generate(model, prompt, new, temperature=0))), "HF": theirs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (2 = a 2-core CI machine)")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary of the tiny model")
    p.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--skip-124m", action="store_true", help="only the tiny comparison")
    p.add_argument("--hf-124m", action="store_true", help="also time HF generate on gpt2-124m")
    p.add_argument("--ops", action="store_true", help="also count aten ops per token on the tiny model")
    args = p.parse_args()
    import transformers

    load_before = os.getloadavg()
    torch.manual_seed(0)
    tiny = Transformer(ModelConfig.from_name("tiny", vocab_size=args.vocab)).eval()
    tiny_hf = hf_twin(tiny)
    prompt = torch.randint(0, args.vocab, (args.prompt,)).tolist()
    big = None if args.skip_124m else Transformer(ModelConfig.from_name("gpt2-124m")).eval()
    big_hf = hf_twin(big) if big is not None and args.hf_124m else None
    big_prompt = torch.randint(0, 50304, (args.prompt,)).tolist()
    tiny_rows, big_rows = [], []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        r = bench_pair(tiny, tiny_hf, prompt, args.new_tokens, args.repeats)
        tiny_rows.append(f"| tiny (vocab {args.vocab}) | {threads} | {r['hwlm']:,.0f} | {r['HF']:,.0f} | "
                         f"{r['hwlm'] / r['HF']:.2f}x |")
        if big is None:
            continue
        r = bench_pair(big, big_hf, big_prompt, args.new_tokens, max(3, args.repeats // 2))
        weight_bytes = sum(p.numel() * p.element_size() for p in big.parameters())  # tied matrix read once
        bw = copy_bandwidth()
        achieved = weight_bytes * r["hwlm"]
        hf_col = f"{r['HF']:,.1f}" if "HF" in r else "n/a"
        big_rows.append(f"| {threads} | {r['hwlm']:,.1f} | {hf_col} | {weight_bytes / 1e6:,.0f} MB | "
                        f"{achieved / 1e9:.1f} | {bw / 1e9:.1f} | {achieved / bw:.0%} |")
    print(f"\nBatch-1 greedy decode, prompt {args.prompt}, {args.new_tokens} new tokens, median of {args.repeats}\n")
    print("| model | threads | hwlm tok/s | HF tok/s | ratio |\n|---|---:|---:|---:|---:|")
    print("\n".join(tiny_rows))
    if big_rows:
        print("\n| gpt2-124m fp32, threads | hwlm tok/s | HF tok/s | weight bytes/token | achieved GB/s | "
              "copy GB/s | fraction |\n|---|---:|---:|---:|---:|---:|---:|")
        print("\n".join(big_rows))
    if args.ops:
        ops = ops_per_token(tiny, tiny_hf, prompt, args.new_tokens)
        print(f"\naten ops per token (tiny, prefill included): hwlm {ops['hwlm']:.0f}, HF {ops['HF']:.0f}")
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, load average (1 min) {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
