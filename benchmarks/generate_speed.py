"""Batch-1 decoding speed of ``hwlm.model.generate`` against ``transformers`` ``generate``.

1. ``tiny`` (4L/4H/128): tokens/s of hwlm's KV-cache loop and of HF ``GPT2LMHeadModel.generate``
   (``use_cache=True``, greedy), with the *same weights* (copied through hwlm's HF export
   mapping), so the two must emit the same tokens, which is checked.
2. ``gpt2-124m``: hwlm's decode tokens/s (``hwlm``: the plain gemv path of ``hwlm.model.generate``;
   ``packed``: the same on weights packed for oneDNN, :mod:`hwlm.model.packing`, what ``hwlm generate``
   runs on a CPU) and the memory bandwidth it achieves: bytes of weights
   read per token (every parameter once, float32) x tokens/s, as a fraction of the copy
   bandwidth measured here (a 512 MB tensor copy, bytes read + written, the best of three) and of a
   read-only stream (``sum`` of 512 MB): a decode step only reads its weights, so it can pass 100% of
   the copy. Tokens/s include the prompt's prefill.

3. ``--onnx``: the same weights exported by ``hwlm.export.onnx`` and decoded by onnxruntime (fp32,
   the same thread count), beside hwlm and HF, for tiny and (with ``--hf-124m``) gpt2-124m.
4. ``--compile``: hwlm's fixed-shape decode step under ``torch.compile`` (``generate(compile=True)``);
   on CUDA it is the CUDA-graph path (``--device cuda``), compared with eager decoding. On gpt2-124m
   also the compiled step alone (``step_alone``: no prefill, no loop around it), with the weights in
   2 MiB pages (what hwlm's CPU decoders do) against a copy in 4 KiB pages, each against the copy and
   read rates of buffers in the same pages.
5. ``--target RUN --draft RUN2``: speculative decoding (``hwlm.model.speculative``) against plain
   greedy decoding of the target, on a prompt from the runs' own validation tokens: tokens/s, the
   speed-up, the acceptance rate, and whether the tokens are identical (they must be).

Runs are interleaved and the median is shown. Times include the prompt's prefill.

    python benchmarks/generate_speed.py                    # 1 and 2 threads, tiny and gpt2-124m
    python benchmarks/generate_speed.py --threads 1 --new-tokens 48 --skip-124m
    flock /tmp/hwlm-bench.lock python benchmarks/generate_speed.py --threads 2 --hf-124m --onnx --compile \
        --target runs/target --draft runs/draft

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
import tempfile
import time
from typing import Callable

import torch

from hwlm.export.hf import hf_state_dict
from hwlm.model import ModelConfig, Transformer, generate
from hwlm.model.decoding import huge_pages

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_speed import cpu_model  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def _buffer(n_bytes: int, huge: bool) -> torch.Tensor:
    """``n_bytes`` of fp32 ones, in 4 KiB pages (torch's default) or 2 MiB ones (``hwlm.model.decoding.huge_pages``)."""
    t = torch.ones(n_bytes // 4)
    if huge:
        huge_pages([t])
    return t


def copy_bandwidth(n_bytes: int = 512 << 20, repeats: int = 5, huge: bool = False) -> float:
    """Median bytes/s of ``dst.copy_(src)`` counting bytes read plus bytes written.

    Both sides count, so a read-only stream (a decode step reading its weights) can pass 100% of it:
    see :func:`read_bandwidth`. ``huge``: both buffers in 2 MiB pages, as hwlm's decoders keep weights."""
    src, dst = _buffer(n_bytes, huge), _buffer(n_bytes, huge)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * n_bytes / statistics.median(times)


def read_bandwidth(n_bytes: int = 512 << 20, repeats: int = 5, huge: bool = False) -> float:
    """Median bytes/s of ``src.sum()`` over ``n_bytes`` of fp32: a read-only stream over the threads."""
    src = _buffer(n_bytes, huge)
    src.sum()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        src.sum()
        times.append(time.perf_counter() - t)
    return n_bytes / statistics.median(times)


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
               repeats: int, extra: dict[str, Callable[[], list[int]]] | None = None) -> dict[str, float]:
    def ours() -> list[int]:
        return list(generate(model, prompt, new, temperature=0))

    def theirs() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              use_cache=True, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    fns = {"hwlm": ours} | ({"HF": theirs} if hf is not None else {}) | (extra or {})
    outs = {name: fn() for name, fn in fns.items()}  # warm-up (compiles), and the tokens to compare
    for name, out in outs.items():
        if out != outs["hwlm"]:
            print(f"warning: hwlm and {name} greedy tokens differ (float round-off can flip near-ties)")
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            timed(fn, repeats, runs, name)
    return {name: new / statistics.median(times) for name, times in runs.items()}


def extras(model: Transformer, prompt: list[int], new: int, onnx: bool, compile: bool,
           tmp: str) -> dict[str, Callable[[], list[int]]]:
    """The other decoders of the same weights: hwlm on weights packed for oneDNN (what ``hwlm generate`` runs on
    a CPU, :mod:`hwlm.model.packing`), onnxruntime (fp32) and hwlm's compiled static step."""
    import copy

    from hwlm.model.packing import pack_linears

    packed = copy.deepcopy(model)  # a copy: the "hwlm" row stays the plain (gemv) path
    pack_linears(packed)
    fns: dict[str, Callable[[], list[int]]] = {
        "packed": lambda: list(generate(packed, prompt, new, temperature=0))}
    if onnx:
        from hwlm.export.onnx import OnnxModel, export_onnx

        t = time.perf_counter()
        om = OnnxModel.load(export_onnx(model, os.path.join(tmp, f"onnx-{model.cfg.n_layer}")))
        print(f"ONNX export of {model.num_params():,} parameters: {time.perf_counter() - t:.0f} s")
        fns["onnx"] = lambda om=om, prompt=prompt, new=new: list(om.generate(prompt, new, temperature=0))
    if compile:
        fns["compiled"] = lambda: list(generate(model, prompt, new, temperature=0, compile=True))
    return fns


def step_alone(model: Transformer, prompt: list[int], new: int, repeats: int) -> dict[str, dict[str, float]]:
    """The compiled step alone (no prefill, no sampling loop), weights in 2 MiB pages against 4 KiB pages.

    ``generate(compile=True)`` moves the weights to huge pages (``hwlm.model.decoding.huge_pages``); the
    other arm decodes a copy of them left in 4 KiB pages (``StaticDecoder(huge=False)``). The rounds
    alternate, and each is followed by a copy and a read in buffers of its own page size, so every
    fraction is one round's weights-read rate over the copy (read) measured right after it in the same
    setting; the medians over the rounds are returned (the shared VM's bandwidth drifts between rounds).
    The decoders have the cache length ``generate`` picks, so they reuse the graph ``generate`` compiled."""
    import copy

    from hwlm.model.decoding import StaticDecoder, cache_length

    max_len = cache_length(len(prompt) + new, model.cfg.block_size)
    arms = {"2 MiB pages": StaticDecoder(model, 1, max_len, compile=True),
            "4 KiB pages": StaticDecoder(copy.deepcopy(model), 1, max_len, compile=True, huge=False)}
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    idx, rounds = torch.tensor([0]), {name: [] for name in arms}
    for r in range(repeats + 1):  # the first round warms up
        for name, dec in arms.items():
            dec.prefill(torch.tensor([prompt]))
            t = time.perf_counter()
            for i in range(new - 1):
                dec.step(idx, torch.tensor([len(prompt) + i]))
            tps = (new - 1) / (time.perf_counter() - t)
            huge = name.startswith("2")
            bw, rd = copy_bandwidth(repeats=3, huge=huge), read_bandwidth(repeats=3, huge=huge)
            if r:
                rounds[name].append((tps, bw, rd))
    med = statistics.median
    return {name: {"tok/s": med(x[0] for x in v), "copy": med(x[1] for x in v), "read": med(x[2] for x in v),
                   "of copy": med(weight_bytes * x[0] / x[1] for x in v),
                   "of read": med(weight_bytes * x[0] / x[2] for x in v)} for name, v in rounds.items()}


def _set_onnx_threads(fns: dict[str, Callable[[], list[int]]], threads: int) -> None:
    """Reopen the onnxruntime session of an ``extras`` entry with ``threads`` intra-op threads."""
    fn = fns.get("onnx")
    if fn is None:
        return
    from hwlm.export.onnx import OnnxModel

    om = fn.__defaults__[0] if fn.__defaults__ else None
    if isinstance(om, OnnxModel):
        fresh = OnnxModel.load(om.path, threads=threads)
        prompt, new = fn.__defaults__[1], fn.__defaults__[2]
        fns["onnx"] = lambda om=fresh, prompt=prompt, new=new: list(om.generate(prompt, new, temperature=0))


def bench_speculative(target_run: str, draft_run: str, prompt_len: int, new: int, repeats: int, k: int,
                      temperature: float = 0.0) -> str:
    """Plain decoding of the target against speculative decoding with the draft, interleaved.

    Greedy (``temperature`` 0) must give identical tokens; sampled rows (seed 0 for both) cannot, and
    show the acceptance of the accept/reject rule, which a repetitive greedy continuation overstates."""
    from hwlm.data import load_manifest
    from hwlm.data.shards import shard_arrays
    from hwlm.model.speculative import SpecStats, check_draft, speculative_generate
    from hwlm.train.load import load_model

    target, draft = load_model(target_run), load_model(draft_run)
    check_draft(target.model, draft.model, target.tokenizer.get_vocab(), draft.tokenizer.get_vocab())
    data = target.run_config["data"]["dir"]
    val = shard_arrays(data, load_manifest(data), "val")[0]
    rows = []
    for start in (0, len(val) // 3, 2 * len(val) // 3):
        prompt = [int(t) for t in val[start:start + prompt_len]]
        stats = SpecStats()
        fns = {"plain": lambda: list(generate(target.model, prompt, new, temperature=temperature, seed=0)),
               "speculative": lambda: list(speculative_generate(target.model, draft.model, prompt, new, k=k,
                                                                temperature=temperature, seed=0, stats=stats))}
        outs = {name: fn() for name, fn in fns.items()}
        runs: dict[str, list[float]] = {}
        for _ in range(repeats):
            for name, fn in fns.items():
                timed(fn, repeats, runs, name)
        tps = {name: new / statistics.median(t) for name, t in runs.items()}
        stats = SpecStats()
        fns["speculative"]()

        def same(outs: dict[str, list[int]]) -> str:
            if temperature > 0:
                return "n/a (sampled)"
            return "yes" if outs["plain"] == outs["speculative"] else "NO"

        rows.append(f"| val offset {start} | {tps['plain']:,.1f} | {tps['speculative']:,.1f} | "
                    f"{tps['speculative'] / tps['plain']:.2f}x | {100 * stats.acceptance_rate:.0f}% | "
                    f"{stats.tokens_per_target_pass:.2f} | {same(outs)} |")
    mode = "greedy" if temperature == 0 else f"sampled at temperature {temperature}"
    head = (f"\nSpeculative decoding, {mode}, k = {k}: target {target_run} ({target.model.num_params():,} parameters), "
            f"draft {draft_run} ({draft.model.num_params():,}), prompt {prompt_len} validation tokens, {new} new\n\n"
            "| prompt | plain tok/s | speculative tok/s | speed-up | accepted | tokens per target pass | identical |\n"
            "|---|---:|---:|---:|---:|---:|---|")
    return head + "\n" + "\n".join(rows)


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


def cuda_main(args: argparse.Namespace) -> None:
    """On a GPU: gpt2-124m eager decoding against the compiled (CUDA-graph) fixed-shape step, bf16 and fp32."""
    device = torch.device(args.device)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = Transformer(ModelConfig.from_name("gpt2-124m")).to(device, dtype).eval()
        prompt = torch.randint(0, 50304, (args.prompt,)).tolist()
        fns = {"eager": lambda: list(generate(model, prompt, args.new_tokens, temperature=0)),
               "CUDA graphs": lambda: list(generate(model, prompt, args.new_tokens, temperature=0, compile=True))}
        outs = {name: fn() for name, fn in fns.items()}  # warm-up and compile
        same = sum(a == b for a, b in zip(outs["eager"], outs["CUDA graphs"]))
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                torch.cuda.synchronize()
                timed(fn, args.repeats, runs, name)
        tps = {name: args.new_tokens / statistics.median(t) for name, t in runs.items()}
        rows.append(f"| {str(dtype).removeprefix('torch.')} | {tps['eager']:,.0f} | {tps['CUDA graphs']:,.0f} | "
                    f"{tps['CUDA graphs'] / tps['eager']:.2f}x | {same}/{len(outs['eager'])} |")
    print(f"\ngpt2-124m batch-1 greedy decode on {torch.cuda.get_device_name(device)}, {args.new_tokens} new tokens\n")
    print("| dtype | eager tok/s | compiled + CUDA graphs tok/s | speed-up | greedy tokens equal |\n"
          "|---|---:|---:|---:|---:|")
    print("\n".join(rows))


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
    p.add_argument("--onnx", action="store_true", help="also decode the same weights with onnxruntime (fp32)")
    p.add_argument("--compile", action="store_true", help="also decode with the compiled fixed-shape step")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: eager against compiled (CUDA graphs) only")
    p.add_argument("--target", help="a trained run: speculative decoding against plain, with --draft")
    p.add_argument("--draft", help="a smaller run on the target's data (same tokenizer)")
    p.add_argument("--draft-k", type=int, default=4, help="guesses per round (default: 4)")
    p.add_argument("--spec-temperatures", default="0", help="comma list: 0 = greedy, >0 sampled (default: 0)")
    p.add_argument("--skip-tiny", action="store_true", help="skip the tiny comparison")
    args = p.parse_args()
    if args.device != "cpu":
        return cuda_main(args)
    import transformers

    load_before = os.getloadavg()
    torch.manual_seed(0)
    tiny = Transformer(ModelConfig.from_name("tiny", vocab_size=args.vocab)).eval()
    tiny_hf = hf_twin(tiny)
    prompt = torch.randint(0, args.vocab, (args.prompt,)).tolist()
    big = None if args.skip_124m else Transformer(ModelConfig.from_name("gpt2-124m")).eval()
    big_hf = hf_twin(big) if big is not None and args.hf_124m else None
    big_prompt = torch.randint(0, 50304, (args.prompt,)).tolist()
    tiny_rows, big_rows, alone_rows = [], [], []
    tmp = tempfile.mkdtemp(prefix="hwlm-genbench-")
    tiny_extra = extras(tiny, prompt, args.new_tokens, args.onnx, args.compile, tmp)
    big_extra = extras(big, big_prompt, args.new_tokens, args.onnx, args.compile, tmp) if big is not None else {}
    names = [n for n in ("packed", "onnx", "compiled") if n in tiny_extra]
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for fn_set in (tiny_extra, big_extra):  # onnxruntime sessions take the thread count at creation
            _set_onnx_threads(fn_set, threads)
        if not args.skip_tiny:
            r = bench_pair(tiny, tiny_hf, prompt, args.new_tokens, args.repeats, tiny_extra)
            cols = "".join(f" {r[n]:,.0f} ({r[n] / r['HF']:.2f}x HF) |" for n in names)
            tiny_rows.append(f"| tiny (vocab {args.vocab}) | {threads} | {r['hwlm']:,.0f} | {r['HF']:,.0f} | "
                             f"{r['hwlm'] / r['HF']:.2f}x |{cols}")
        if big is None:
            continue
        r = bench_pair(big, big_hf, big_prompt, args.new_tokens, max(3, args.repeats // 2), big_extra)
        weight_bytes = sum(p.numel() * p.element_size() for p in big.parameters())  # tied matrix read once
        bw = max(copy_bandwidth() for _ in range(3))  # the best of three, as benchmarks/gemv_bandwidth.py takes
        rd = max(read_bandwidth() for _ in range(3))
        bw2 = max(copy_bandwidth(huge=True) for _ in range(3))
        for name in ("hwlm", *names):
            achieved = weight_bytes * r[name]
            hf_col = f"{r['HF']:,.1f}" if "HF" in r else "n/a"
            ratio = f"{r[name] / r['HF']:.2f}x" if "HF" in r else "n/a"
            big_rows.append(f"| {threads} | {name} | {r[name]:,.1f} | {hf_col} | {ratio} | {weight_bytes / 1e6:,.0f} MB | "
                            f"{achieved / 1e9:.1f} | {bw / 1e9:.1f} | {achieved / bw:.0%} | {rd / 1e9:.1f} | "
                            f"{achieved / rd:.0%} | {bw2 / 1e9:.1f} | {achieved / bw2:.0%} |")
        if "compiled" in big_extra:
            for arm, a in step_alone(big, big_prompt, args.new_tokens, args.repeats).items():
                alone_rows.append(f"| {threads} | {arm} | {a['tok/s']:,.1f} | {weight_bytes * a['tok/s'] / 1e9:.1f} | "
                                  f"{a['copy'] / 1e9:.1f} | {a['of copy']:.0%} | {a['read'] / 1e9:.1f} | "
                                  f"{a['of read']:.0%} |")
    print(f"\nBatch-1 greedy decode, prompt {args.prompt}, {args.new_tokens} new tokens, median of {args.repeats}\n")
    if tiny_rows:
        print("| model | threads | hwlm tok/s | HF tok/s | ratio |" + "".join(f" {n} tok/s |" for n in names) +
              "\n|---|---:|---:|---:|---:|" + "---:|" * len(names))
        print("\n".join(tiny_rows))
    if big_rows:
        print("\n| gpt2-124m fp32, threads | decoder | tok/s | HF tok/s | vs HF | weight bytes/token | achieved GB/s | "
              "copy GB/s | of copy | read GB/s | of read | copy GB/s, 2 MiB pages | of it |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(big_rows))
    if alone_rows:
        print(f"\nThe compiled step alone (no prefill, no loop), {args.repeats} alternating rounds of {args.new_tokens - 1} "
              "steps, each followed by a copy and a read in buffers of the same page size; medians over the rounds, "
              "each fraction taken per round\n\n| threads | weights in | tok/s | achieved GB/s | copy GB/s | of copy | "
              "read GB/s | of read |\n|---|---|---:|---:|---:|---:|---:|---:|")
        print("\n".join(alone_rows))
    if args.target and args.draft:
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for temp in (float(t) for t in args.spec_temperatures.split(",")):
                print(f"\n{threads} thread(s):", bench_speculative(args.target, args.draft, args.prompt,
                                                                  args.new_tokens, args.repeats, args.draft_k, temp))
    if args.ops:
        ops = ops_per_token(tiny, tiny_hf, prompt, args.new_tokens)
        print(f"\naten ops per token (tiny, prefill included): hwlm {ops['hwlm']:.0f}, HF {ops['HF']:.0f}")
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, load average (1 min) {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
