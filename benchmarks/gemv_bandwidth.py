"""Batch-1 decode is a row of matrix-vector products: how fast does each way of computing them stream fp32 weights?

The gpt2-124m shape's Linears at one row (per layer c_attn 2304x768, c_proj 768x768, c_fc 3072x768,
mlp c_proj 768x3072; 12 layers; the output layer 50304x768), every weight read once per token, timed
as one sweep through all of them, against the copy bandwidth of the same machine (bytes read plus
written, as benchmarks/generate_speed.py counts it; the best of three). Each form's figure is its fastest
sweep of ``--repeats`` (load from other jobs only slows a sweep), checked against ``F.linear`` (max abs
difference of the outputs). Forms:

* ``F.linear``: what the model calls (MKL sgemv at M=1);
* ``torch.mv``: the same product spelt as a matrix-vector op;
* ``x @ W^T (pre-transposed)``: ``torch.mm`` on a (K, N) copy of the weight: MKL's gemm with M=1;
* ``bmm over T row blocks``: the weight as (T, N/T, K) and one ``torch.bmm`` (ATen may split the batch
  over threads);
* ``mkldnn packed``: ``torch.ops.mkldnn._linear_pointwise`` on a weight reordered once for oneDNN;
* ``compiled (W * x).sum(-1)``: inductor's fused, vectorised, OpenMP-parallel reduction over the rows;
* ``compiled F.linear``: what ``torch.compile`` makes of the plain call;
* ``read only: W.sum()``: no product at all, ATen's parallel sum of each weight: the read-only roof.

hwlm's compiled decode step (``hwlm.model.decoding.row_linear``) takes the fused reduction.

``--per-shape``: each of the four shapes on its own (768x768, 768x3072, 3072x768, 50304x768), as many
copies as make about 256 MB (more than the last-level cache holds), every form called on the whole
list: a compiled form is one graph over the list, as the decode step is one graph per token (the
sweep above pays dynamo's per-call cost 49 times). Rounds of all forms are interleaved. Forms:
``F.linear``; ``2 MKL gemvs in parallel``: the two halves of the output rows on two inter-op threads
(``torch.jit.fork``, one MKL call each); the compiled reduction as inductor writes it by default, with
``cpp.simdlen=256`` and with a realized activation; ``compiled blocked (N/16, K, 16)``: the weight laid
out in blocks of 16 rows, K-major inside a block, so the reduction is 16 outputs in one vector
register accumulated along K (no horizontal sum per row); ``compiled F.linear, max-autotune CPP GEMM``:
inductor's CPP GEMM template against ATen; ``read only: W.sum()``.

``--int8``: the same sweep over per-channel int8 copies of the weights (one byte per weight; the
activation row quantized per token as w8a8 does), each form checked against the exact integer
product ``(xq @ Wq^T) * s * scales`` in float64:

* ``_int_mm (w8a8 eager)``: ``hwlm.model.quantized.Int8Linear``'s eager w8a8 code, quantization included;
* ``compiled _int_mm``: the same code under ``torch.compile`` (the quantization fused, ``_int_mm`` extern);
* ``compiled int32 dot``: ``(xq.int() * Wq.int()).sum(-1)``, exact integer accumulation;
* ``compiled fp32 x int8 (w8a8, ...)``: ``(Wq.float() * codes).sum(-1) * s * scales``, the w8a8 numbers
  with fp32 accumulation (exact while partial sums stay under 2**24), the codes as ``round(x / s)`` or as
  ``hwlm.model.quantized.quantize_rows`` rounds them (``round(x * 127 / max|x|)``: inductor recomputes the
  rounding for every weight element, a divide each in the first form, a multiply in the second);
* ``compiled fp32 x int8 (w8a16)``: ``(Wq.float() * x).sum(-1) * scales``, no activation rounding;
* ``_weight_int8pack_mm bf16``: the w8a16 eager kernel.

    flock /tmp/hwlm-bench.lock .venv/bin/python benchmarks/gemv_bandwidth.py --threads 1,2 [--int8 | --per-shape]

"Of copy bandwidth" is weight bytes read per second over the copy's bytes read plus written (what
benchmarks/generate_speed.py and compress_speed.py divide by): a read-only stream can pass 100%.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate_speed import copy_bandwidth  # noqa: E402  (benchmarks/ is a folder of scripts)

from hwlm.model.quantized import quantize_rows  # noqa: E402

C, LAYERS, VOCAB = 768, 12, 50304
SHAPES = [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)] * LAYERS + [(VOCAB, C)]


def _weights(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, k, generator=gen) * 0.02 for n, k in SHAPES]


def _sweep(fn: Callable[[int, torch.Tensor], torch.Tensor], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [fn(i, x) for i, x in enumerate(xs)]


def _forms(ws: list[torch.Tensor]) -> dict[str, Callable[[int, torch.Tensor], torch.Tensor]]:
    wt = [w.t().contiguous() for w in ws]
    forms: dict[str, Callable[[int, torch.Tensor], torch.Tensor]] = {
        "F.linear": lambda i, x: F.linear(x, ws[i]),
        "torch.mv": lambda i, x: torch.mv(ws[i], x.view(-1)).view(1, -1),
        "x @ W^T (pre-transposed)": lambda i, x: torch.mm(x, wt[i]),
    }
    for t in (2, 8):
        blocks = [w.view(t, w.size(0) // t, w.size(1)) for w in ws]
        forms[f"bmm over {t} row blocks"] = (
            lambda i, x, b=blocks, t=t: torch.bmm(b[i], x.view(1, -1, 1).expand(t, -1, 1)).view(1, -1))
    try:
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in ws]
        forms["mkldnn packed"] = lambda i, x: torch.ops.mkldnn._linear_pointwise(x, packed[i], None, "none", [], "")
    except (RuntimeError, AttributeError) as exc:
        print(f"mkldnn packed linear unavailable: {str(exc).splitlines()[0]}")
    # one compiled function per weight shape, so each keeps its own graph (dynamo's recompile limit is 8)
    red = {s: torch.compile(lambda w, x: (w * x).sum(-1).view(1, -1), dynamic=False) for s in set(SHAPES)}
    forms["compiled (W * x).sum(-1)"] = lambda i, x: red[SHAPES[i]](ws[i], x)
    lin = {s: torch.compile(lambda w, x: F.linear(x, w), dynamic=False) for s in set(SHAPES)}
    forms["compiled F.linear"] = lambda i, x: lin[SHAPES[i]](ws[i], x)
    forms["read only: W.sum()"] = lambda i, x: ws[i].sum()
    return forms


PER_SHAPE = [(C, C), (C, 4 * C), (4 * C, C), (VOCAB, C)]
PER_SHAPE_BYTES = 256 << 20


class _Weights(torch.nn.Module):
    """The copies of one shape as frozen parameters, so that inductor's CPP GEMM template may pack them."""

    def __init__(self, ws: list[torch.Tensor]) -> None:
        super().__init__()
        self.ws = torch.nn.ParameterList(torch.nn.Parameter(w, requires_grad=False) for w in ws)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [F.linear(x, w) for w, x in zip(self.ws, xs)]


@torch.jit.script
def _two_gemvs(x: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """One row times both halves of a weight's rows at once: the bottom half on an inter-op thread."""
    fut = torch.jit.fork(torch.mm, x, bottom.t())
    return torch.cat((torch.mm(x, top.t()), torch.jit.wait(fut)), dim=1)


def _per_shape_forms(ws: list[torch.Tensor]) -> dict[str, Callable[[list[torch.Tensor]], list[torch.Tensor]]]:
    """Every form over the whole list of copies: compiled forms as one graph over the list."""
    n, k = ws[0].shape
    half = n // 2
    halves = [(w[:half], w[half:]) for w in ws]
    pool = concurrent.futures.ThreadPoolExecutor(1)  # a second Python thread: ATen releases the GIL in F.linear

    def pooled(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for (top, bottom), x in zip(halves, xs):
            fut = pool.submit(F.linear, x, bottom)
            out.append(torch.cat((F.linear(x, top), fut.result()), dim=1))
        return out

    def rows(ws: list[torch.Tensor], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [(w * x).sum(-1).view(1, -1) for w, x in zip(ws, xs)]

    def blocked(wb: list[torch.Tensor], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [(w * x.view(1, k, 1)).sum(1).view(1, -1) for w, x in zip(wb, xs)]  # (N/16, K, 16) -> (N/16, 16)

    wb = [w.view(n // 16, 16, k).transpose(1, 2).contiguous() for w in ws]
    forms: dict[str, Callable[[list[torch.Tensor]], list[torch.Tensor]]] = {
        "F.linear": lambda xs: [F.linear(x, w) for w, x in zip(ws, xs)],
        "2 MKL gemvs in parallel (torch.jit.fork)": lambda xs: [_two_gemvs(x, *h) for h, x in zip(halves, xs)],
        "2 MKL gemvs in parallel (thread pool)": pooled,
    }
    for name, opts in (("compiled (W * x).sum(-1)", {}), ("compiled (W * x).sum(-1), cpp.simdlen=256",
                                                         {"cpp.simdlen": 256})):
        comp = torch.compile(rows, dynamic=False, options=opts)
        forms[name] = lambda xs, comp=comp: comp(ws, xs)
    comp_b = torch.compile(blocked, dynamic=False)
    forms["compiled blocked (N/16, K, 16)"] = lambda xs: comp_b(wb, xs)
    frozen = _Weights(ws).eval()
    tuned = torch.compile(frozen, dynamic=False,
                          options={"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"})

    def tuned_fn(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        # The template wants the weight constant: freezing, read before ``options`` apply, so patched here.
        with torch._inductor.config.patch(freezing=True):
            return tuned(xs)

    forms["compiled F.linear, max-autotune CPP GEMM"] = tuned_fn
    forms["read only: W.sum()"] = lambda xs: [w.sum() for w in ws]
    return forms


def per_shape(threads: list[int], repeats: int) -> None:
    """``--per-shape``: the table of GB/s per shape and form (rounds of all forms interleaved)."""
    print("| threads | shape (N x K) | form | GB/s | of copy bandwidth | max abs diff vs F.linear |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for t in threads:
        torch.set_num_threads(t)
        copy = max(copy_bandwidth() for _ in range(3))
        for n, k in PER_SHAPE:
            copies = max(1, PER_SHAPE_BYTES // (4 * n * k))
            ws = [torch.randn(n, k, generator=gen) * 0.02 for _ in range(copies)]
            xs = [torch.randn(1, k, generator=gen) for _ in range(copies)]
            ref = [F.linear(x, w) for w, x in zip(ws, xs)]
            forms = _per_shape_forms(ws)
            with torch.no_grad():  # (not inference_mode: freezing, for the CPP GEMM template, needs this)
                diffs = {name: _max_diff(fn(xs), ref) for name, fn in forms.items()}  # warm-up and compile
                times: dict[str, list[float]] = {name: [] for name in forms}
                for _ in range(repeats):
                    for name, fn in forms.items():
                        t0 = time.perf_counter()
                        fn(xs)
                        times[name].append(time.perf_counter() - t0)
            n_bytes = 4 * n * k * copies
            for name, ts in times.items():
                sec = min(ts)  # other jobs only slow a round down
                print(f"| {t} | {n} x {k} ({copies} copies) | {name} | {n_bytes / sec / 1e9:.1f} | "
                      f"{n_bytes / sec / copy:.0%} | {diffs[name]:.1e} |", flush=True)
        print(f"| {t} | | copy (read + write, 512 MB) | {copy / 1e9:.1f} | 100% | |", flush=True)


def _max_diff(out: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) if a.shape == b.shape else float("nan") for a, b in zip(out, ref))


def _quantize(ws: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-output-channel symmetric int8 (what ``Int8Linear.from_linear`` stores): (Wq (N, K) int8, scales (N,))."""
    out = []
    for w in ws:
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        out.append((torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8), scales))
    return out


def _row_scale(x: torch.Tensor) -> torch.Tensor:
    return x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0  # (1, 1)


def _int8_forms(qs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Callable[[int, torch.Tensor], torch.Tensor]]:
    def int_mm(wq: torch.Tensor, sc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True).clamp_(min=1e-12).div_(127.0)
        return torch._int_mm(torch.round(x / s).to(torch.int8), wq.t()).float().mul_(s).mul_(sc)

    def int32_dot(wq: torch.Tensor, sc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = _row_scale(x)
        xq = torch.round(x / s).to(torch.int32)
        return ((wq.to(torch.int32) * xq).sum(-1).float() * s.view(1) * sc).view(1, -1)

    def fp32_w8a8_div(wq: torch.Tensor, sc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = _row_scale(x)
        return ((wq.float() * torch.round(x / s)).sum(-1) * (s.view(1) * sc)).view(1, -1)

    def fp32_w8a8(wq: torch.Tensor, sc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        xq, s = quantize_rows(x)  # what Int8Linear's compiled row calls: codes round(x * 127 / max|x|)
        return ((wq.float() * xq).sum(-1) * (s.view(1) * sc)).view(1, -1)

    def fp32_w8a16(wq: torch.Tensor, sc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return ((wq.float() * x).sum(-1) * sc).view(1, -1)

    shapes = set(SHAPES)
    forms: dict[str, Callable[[int, torch.Tensor], torch.Tensor]] = {
        "_int_mm (w8a8 eager)": lambda i, x: int_mm(*qs[i], x)}
    for name, fn in (("compiled _int_mm", int_mm), ("compiled int32 dot", int32_dot),
                     ("compiled fp32 x int8 (w8a8, x / s rounded)", fp32_w8a8_div),
                     ("compiled fp32 x int8 (w8a8, Int8Linear's row)", fp32_w8a8),
                     ("compiled fp32 x int8 (w8a16)", fp32_w8a16)):
        comp = {s: torch.compile(fn, dynamic=False) for s in shapes}  # a graph per shape, as in _forms
        forms[name] = lambda i, x, comp=comp: comp[SHAPES[i]](*qs[i], x)
    bf16 = [(wq, sc.to(torch.bfloat16)) for wq, sc in qs]
    forms["_weight_int8pack_mm bf16 (w8a16)"] = (
        lambda i, x: torch._weight_int8pack_mm(x.to(torch.bfloat16), *bf16[i]).float())
    return forms


def _int8_reference(qs: list[tuple[torch.Tensor, torch.Tensor]], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The exact w8a8 product in float64: integer dot products, then the two scales."""
    out = []
    for (wq, sc), x in zip(qs, xs):
        s = _row_scale(x).double()
        xq = torch.round(x.double() / s)
        out.append(((xq @ wq.double().t()) * s * sc.double()).float())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--int8", action="store_true", help="time int8 weights (w8a8 / w8a16 forms) instead of fp32")
    p.add_argument("--per-shape", action="store_true",
                   help="each shape on its own, compiled forms as one graph per shape (see the docstring)")
    args = p.parse_args()
    torch.set_num_interop_threads(2)  # once, before any inter-op work: the second of two parallel MKL gemvs
    torch._dynamo.config.recompile_limit = 64  # a graph per shape, option set and thread count
    if args.per_shape:
        print(f"load average {os.getloadavg()[0]:.2f}")
        per_shape([int(t) for t in args.threads.split(",")], args.repeats)
        print(f"load average after {os.getloadavg()[0]:.2f}")
        return
    ws = _weights()
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, k, generator=gen) for _, k in SHAPES]
    if args.int8:
        qs = _quantize(ws)
        n_bytes, ref, forms, what = sum(w.numel() for w in ws), _int8_reference(qs, xs), _int8_forms(qs), "int8"
    else:
        n_bytes, ref, forms, what = sum(w.numel() * 4 for w in ws), _sweep(lambda i, x: F.linear(x, ws[i]), xs), \
            _forms(ws), "fp32"
    print(f"load average {os.getloadavg()[0]:.2f}; {len(ws)} matrices, {n_bytes / 1e6:.0f} MB of {what} weights")
    print(f"| threads | form | GB/s | of copy bandwidth | ms per sweep | max abs diff vs "
          f"{'the exact w8a8 product' if args.int8 else 'F.linear'} |")
    print("|---|---|---|---|---|---|")
    torch._dynamo.config.recompile_limit = 64  # a graph per shape and thread count
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        copy = max(copy_bandwidth() for _ in range(3))
        for name, fn in forms.items():
            out = _sweep(fn, xs)  # warm-up (and compilation)
            diff = max(float((a - b).abs().max()) if a.shape == b.shape else float("nan") for a, b in zip(out, ref))
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                _sweep(fn, xs)
                times.append(time.perf_counter() - t0)
            sec = min(times)  # other jobs on a shared machine only slow a sweep down: the fastest is the least disturbed
            print(f"| {threads} | {name} | {n_bytes / sec / 1e9:.1f} | {n_bytes / sec / copy:.0%} | {1e3 * sec:.1f} "
                  f"| {diff:.1e} |", flush=True)
        print(f"| {threads} | copy (read + write) | {copy / 1e9:.1f} | 100% | | |", flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
