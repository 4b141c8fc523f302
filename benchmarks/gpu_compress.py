"""Compressed decoding on a GPU: tokens/s of each weight format, eager and as a CUDA graph, and 2:4 sparse GEMMs.

Part of ``benchmarks/gpu.sh`` (issue 9's GPU checks): on the GPT-2 124M shape with random weights,

1. one decode step of ``B`` rows through the static per-layer KV cache (``hwlm.model.decoding.StaticDecoder``),
   eager and compiled (``torch.compile(mode="reduce-overhead")``: one CUDA graph per step), for bf16,
   ``w8a16`` (int8 weights), ``w4a16`` (int4 tinygemm), ``w8a8`` (``torch._int_mm``; CUDA needs 17+ rows,
   so fewer rows run weight-only) and 2:4-pruned bf16 weights held by ``to_sparse_semi_structured``;
2. dense against 2:4 semi-structured ``F.linear`` at a few token counts on the model's two MLP shapes,
   where sparse tensor cores should approach 2x at large M (Mishra et al. 2021) and give little at decode.

Every measurement is written to ``--out`` as soon as it is taken, so a step cut short by its time limit
still leaves what it measured; one that fails records its error and the rest go on. ``--device cpu
--model tiny`` runs the same code paths quickly (no CUDA graphs, no 2:4 kernels) to test the script.

    python benchmarks/gpu_compress.py --out runs/bench/gpu-compress.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hwlm.compress.prune import two_four_mask  # noqa: E402
from hwlm.compress.quant import quantize_model  # noqa: E402
from hwlm.model import ModelConfig, Transformer  # noqa: E402
from hwlm.model.decoding import StaticDecoder  # noqa: E402
from hwlm.model.quantized import after_load, linear_targets  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls, after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build(form: str, base: Transformer) -> Transformer:
    """A copy of ``base`` (bf16 on its device) in ``form``."""
    model = copy.deepcopy(base)
    if form in ("w8a16", "w4a16", "w8a8"):
        return quantize_model(model, form, group_size=128, include_head=True)
    if form.startswith("bf16-2:4"):  # bf16-2:4 (torch's default backend, cuSPARSELt) or bf16-2:4-cutlass (sm 8.x)
        with torch.no_grad():
            for parent, name in linear_targets(model, False):
                lin = getattr(parent, name)
                lin.weight.mul_(two_four_mask(lin.weight.detach()))
        if next(model.parameters()).device.type == "cuda":
            with cutlass(form.endswith("-cutlass")):
                after_load(model, {"pattern": "2:4", "sparse_kernels": "always"})  # hwlm's 2:4 modules
    return model


class cutlass:
    """Within: ``to_sparse_semi_structured`` makes CUTLASS tensors instead of cuSPARSELt ones (``on``)."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        from torch.sparse import SparseSemiStructuredTensor

        self.before = SparseSemiStructuredTensor._FORCE_CUTLASS
        SparseSemiStructuredTensor._FORCE_CUTLASS = self.on

    def __exit__(self, *exc: object) -> None:
        from torch.sparse import SparseSemiStructuredTensor

        SparseSemiStructuredTensor._FORCE_CUTLASS = self.before


def decode_rate(model: Transformer, batch: int, compile: bool, steps: int, prompt: int) -> float:
    """Generated tokens/s of one decode step at ``batch`` rows, each row at position ``prompt``."""
    device = next(model.parameters()).device
    prompt = min(prompt, model.cfg.block_size // 2)
    steps = max(1, min(steps, model.cfg.block_size - prompt - 8))
    dec = StaticDecoder(model, batch_size=batch, max_len=prompt + steps + 8, compile=compile)
    dec.prefill(torch.randint(0, model.cfg.vocab_size, (batch, prompt), device=device))
    idx = torch.zeros(batch, dtype=torch.long, device=device)
    pos = torch.full((batch,), prompt, dtype=torch.long, device=device)

    def run() -> None:
        for _ in range(steps):
            dec.step(idx, pos)

    return batch * steps / timed(run, device, 3)


def sparse_gemm(device: torch.device, shapes: list[tuple[int, int]], tokens: list[int]) -> list[dict[str, Any]]:
    """Dense against 2:4 ``F.linear`` (fp16 and bf16), microseconds per call."""
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for n, k in shapes:
            w = torch.randn(n, k, device=device, dtype=dtype)
            w = w * two_four_mask(w)
            for backend in ("cusparselt", "cutlass"):
                with cutlass(backend == "cutlass"):
                    ws = to_sparse_semi_structured(w)
                for m in tokens:
                    x = torch.randn(m, k, device=device, dtype=dtype)
                    # 20 calls between synchronisations: the time of the kernels, not of one launch and a sync
                    dense = timed(lambda: [F.linear(x, w) for _ in range(20)], device, 10) / 20
                    sparse = timed(lambda: [F.linear(x, ws) for _ in range(20)], device, 10) / 20
                    rows.append({"dtype": str(dtype).removeprefix("torch."), "backend": backend, "out": n, "in": k,
                                 "tokens": m, "dense_us": 1e6 * dense, "sparse_us": 1e6 * sparse,
                                 "speedup": dense / sparse})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="gpt2-124m", help="a preset (tiny to test the script on a CPU)")
    p.add_argument("--forms", default="bf16,w8a16,w4a16,w8a8,bf16-2:4,bf16-2:4-cutlass")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--compile-batches", default=None,
                   help="batches also timed compiled (CUDA graphs on CUDA; each compiles); default 1,32 on CUDA, "
                        "none on a CPU")
    p.add_argument("--steps", type=int, default=32, help="decode steps per timed call")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("runs/bench/gpu-compress.json"))
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --model tiny to test the script", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "model": args.model, "prompt": args.prompt, "steps": args.steps,
        "load_before": os.getloadavg(), "decode": [], "sparse_gemm": [], "errors": []}

    def save() -> None:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(args.out)

    # One compiled static_step serves every form and batch: dynamo keeps a graph per model and shape,
    # more than its default limit of 8 here (a graph over the limit would silently run eager).
    torch._dynamo.config.recompile_limit = 64
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base = Transformer(ModelConfig.from_name(args.model)).to(device, dtype).eval()
    record["float_dtype"] = str(dtype).removeprefix("torch.")  # what "bf16" means here (fp32 on a CPU test)
    if device.type == "cuda":
        try:
            cfg = base.cfg
            shapes = [(4 * cfg.n_embd, cfg.n_embd), (cfg.n_embd, 4 * cfg.n_embd)]
            record["sparse_gemm"] = sparse_gemm(device, shapes, [1, 32, 512, 4096])
        except Exception as exc:
            record["errors"].append({"stage": "sparse_gemm", "error": f"{type(exc).__name__}: {exc}"[:300]})
        save()  # first: it compiles nothing, so a step cut short by its limit still has it
    batches = [int(b) for b in args.batches.split(",")]
    spec = args.compile_batches if args.compile_batches is not None else ("1,32" if device.type == "cuda" else "")
    compiled = [int(b) for b in spec.split(",") if b]
    for form in args.forms.split(","):
        try:
            model = build(form, base)
        except Exception as exc:  # a format this device or torch lacks: record it and go on
            record["errors"].append({"form": form, "stage": "build", "error": f"{type(exc).__name__}: {exc}"})
            save()
            continue
        for b in batches:
            for comp in (False, True) if b in compiled else (False,):
                try:
                    tps = decode_rate(model, b, comp, args.steps, args.prompt)
                    row = {"form": form, "batch": b, "cuda_graphs": comp, "tokens_per_s": tps}
                    record["decode"].append(row)
                    print(json.dumps(row), flush=True)
                except Exception as exc:
                    record["errors"].append({"form": form, "batch": b, "cuda_graphs": comp,
                                             "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
                    traceback.print_exc(limit=2)
                save()
        del model
    record["load_after"] = os.getloadavg()
    save()
    print(f"\n{args.model} decode on {record['device']} (tokens/s; prompt {args.prompt})\n")
    print("| form | batch | eager | compiled (CUDA graphs on CUDA) |\n|---|---:|---:|---:|")
    by = {(r["form"], r["batch"], r["cuda_graphs"]): r["tokens_per_s"] for r in record["decode"]}
    for form in args.forms.split(","):
        for b in batches:
            if (form, b, False) in by:
                g = by.get((form, b, True))
                print(f"| {form} | {b} | {by[(form, b, False)]:,.0f} | {'-' if g is None else f'{g:,.0f}'} |")
    for r in record["sparse_gemm"]:
        print(f"2:4 {r['dtype']} {r.get('backend', '')} {r['out']}x{r['in']} M={r['tokens']}: dense {r['dense_us']:.1f} us, "
              f"sparse {r['sparse_us']:.1f} us, {r['speedup']:.2f}x")
    for e in record["errors"]:
        print("error:", json.dumps(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
