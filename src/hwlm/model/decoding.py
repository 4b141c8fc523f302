"""A fixed-shape decoding step over the static per-layer KV cache, for ``torch.compile`` and CUDA graphs.

``Transformer.decode_step`` (the eager batch-1 path) attends to ``cache[:pos + 1]``: its shapes grow
by one every token, so a compiler would see a new graph per position. :func:`static_step` instead
attends to the whole preallocated cache with a mask ``key <= pos`` and takes the positions as a
tensor, so every step has the same shapes and the same graph: ``torch.compile(fullgraph=True,
dynamic=False)`` traces it once per cache length, and on CUDA ``mode="reduce-overhead"`` records it
as a CUDA graph (one launch per token instead of one per kernel: a 124M model's decode is
launch-bound on an H200, 2.8 ms per token at any batch, docs/benchmarks.md).

The cache stays one buffer per layer (``KVCache.kv[layer]``, (2, B, K, max_len, D)): a single stacked
(n_layer, ...) buffer was measured 23% slower under compile (issue 9). Each row of the batch has its
own position (``pos`` is (B,)), so a continuous-batching scheduler can decode rows of different lengths
in one step.

    >>> dec = StaticDecoder(model, batch_size=1, max_len=64, compile=True)
    >>> logits = dec.prefill(torch.tensor([[1, 2, 3]]))          # (1, V), cache rows 0..2 written
    >>> logits = dec.step(torch.tensor([7]), torch.tensor([3]))  # (1, V), token 7 at position 3
    >>> dec.prefill_row(0, [4, 5])                               # row 0 restarts with another prompt

Masked-out keys get exactly zero weight, so the step computes what the eager path does, in a
different summation order: logits agree to float round-off and greedy tokens are the same (tested).

One row on a CPU (batch-1 decode, fp32): under ``torch.compile`` each float Linear is written as
``(W * x).sum(-1)`` (:func:`row_linear`), which inductor turns into one fused, vectorised reduction
whose rows are split over the OpenMP threads. MKL's gemv, what ``F.linear`` / ``torch.mv`` call at
one row, stays on one core (12-13 GB/s at 1 or 2 threads on the 2-core AMD EPYC of docs/benchmarks.md);
two MKL calls on the two halves of the rows in parallel, inductor's CPP GEMM template under
max-autotune and oneDNN's packed weight all stream less than the reduction, which on the large
shapes (3072x768, the 50304x768 head) reads within a few percent of ATen's read-only ``sum`` of the
same bytes (``benchmarks/gemv_bandwidth.py --per-shape``). Quantized layers, several rows and GPUs
keep their module call.

On Linux a CPU decoder backs the weights with 2 MiB transparent huge pages (:func:`huge_pages`): a decode
step streams every weight once, and through 4 KiB pages that is a TLB miss (a page walk, nested on a VM)
every 4 KiB of the ~500 MB of a 124M model.
"""

from __future__ import annotations

import ctypes
import sys
import weakref
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from hwlm.model.transformer import KVCache, Transformer, apply_rope, mlp_activation

__all__ = ["StaticDecoder", "static_step", "cache_length", "compile_mode", "row_linear", "huge_pages", "greedy_ahead",
           "compiled_step"]

# Cache lengths are rounded up to a power of two from this size, so that generation with different
# prompt lengths reuses a few compiled graphs instead of compiling one per length.
_MIN_BUCKET = 64


def cache_length(needed: int, block_size: int) -> int:
    """The static cache length for ``needed`` positions: the next power of two >= 64, at most ``block_size``.

    >>> cache_length(20, 1024), cache_length(100, 1024), cache_length(5000, 1024)
    (64, 128, 1024)
    """
    n = _MIN_BUCKET
    while n < needed:
        n *= 2
    return min(n, block_size)


def compile_mode(device: torch.device) -> str | None:
    """``reduce-overhead`` (CUDA graphs) on CUDA, inductor's default elsewhere (no graphs to replay on a CPU)."""
    return "reduce-overhead" if device.type == "cuda" else None


_MADV_HUGEPAGE, _MADV_COLLAPSE = 14, 25  # <asm-generic/mman-common.h>; MADV_COLLAPSE since Linux 6.1


def huge_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Back the CPU ``tensors``' memory by 2 MiB transparent huge pages where Linux allows; returns those bytes.

    For each storage, the 2 MiB-aligned pages inside it get ``madvise(MADV_HUGEPAGE)`` (the kernel keeps
    them huge, also under the sysfs ``madvise`` mode) and ``madvise(MADV_COLLAPSE)``, which copies
    already-touched 4 KiB pages into huge ones now (about 0.1-0.7 s for 500 MB, once: a second call on
    the same memory finds it huge and returns at once). Best effort: another OS, an older kernel, THP set
    to ``never`` or a storage under 2 MiB leave the memory as it was (counted as 0). torch's own
    ``THP_MEM_ALLOC_ENABLE=1`` does the same for allocations made after it is set, but it is read once, at
    torch's first allocation (c10/core/impl/alloc_cpu.cpp), so it cannot reach weights already loaded.
    """
    if sys.platform != "linux":
        return 0
    try:  # 2 MiB on x86-64 and on arm64 with 4 KiB base pages
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            page = int(f.read())
    except (OSError, ValueError):
        return 0  # no transparent huge pages in this kernel
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    seen, done = set(), 0
    for t in tensors:
        if t.device.type != "cpu" or t.layout != torch.strided:
            continue
        try:  # a wrapper subclass (torchao's quantized tensors) has no storage of its own: either call raises
            storage = t.untyped_storage()
            start = storage.data_ptr()
        except (RuntimeError, NotImplementedError):
            continue
        if start in seen:  # tied weights: one storage under two names
            continue
        seen.add(start)
        first = -(-start // page) * page
        end = (start + storage.nbytes()) // page * page
        if end > first and madvise(first, end - first, _MADV_HUGEPAGE) == 0 \
                and madvise(first, end - first, _MADV_COLLAPSE) == 0:
            done += end - first
    return done


def _reduces(layer: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``layer(x)`` is one row of a float CPU Linear inside a compiled graph (see the module docstring)."""
    w = getattr(layer, "weight", None)
    return (type(layer) is torch.nn.Linear and torch.compiler.is_compiling() and x.numel() == x.size(-1)
            and type(w) in (torch.nn.Parameter, torch.Tensor) and w.device.type == "cpu"
            and w.dtype == torch.float32 and w.layout == torch.strided and x.dtype == torch.float32)


def row_linear(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; one row of a float CPU Linear under torch.compile as ``(W * x).sum(-1) + b``.

    Inductor fuses the product and the sum into one reduction over K for each of the N outputs, with
    the N rows split over the threads, so the weight is read once, at both cores' bandwidth. The sum
    runs in another order than MKL's: outputs agree to float round-off (tested within 1e-5)."""
    if not _reduces(layer, x):
        return layer(x)
    y = (layer.weight * x.reshape(1, -1)).sum(-1)  # (N,): W (N, K) times the row, summed over K
    if layer.bias is not None:
        y = y + layer.bias
    return y.view(*x.shape[:-1], -1)


def _mlp(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` with its two Linears through :func:`row_linear` (``hwlm.model.transformer.MLP``'s math)."""
    if not _reduces(mlp.c_fc, x):
        return mlp(x)
    return row_linear(mlp.c_proj, mlp_activation(row_linear(mlp.c_fc, x), mlp.gated))


def static_step(model: Transformer, kv: list[torch.Tensor], idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) for tokens ``idx`` (B,) at positions ``pos`` (B,), writing their keys/values into ``kv``.

    ``kv`` is ``KVCache.kv``: per layer a (2, B, K, max_len, D) buffer. Every shape is fixed by the
    cache, none by ``pos``: attention covers all ``max_len`` keys with the mask ``key <= pos``.
    """
    cfg = model.cfg
    H, K, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    B, max_len = idx.size(0), kv[0].size(3)
    rows = torch.arange(B, device=idx.device)
    x = model.wte(idx).view(B, 1, -1)  # (B, 1, C)
    rope = None
    if model.wpe is not None:
        x = x + model.wpe(pos).view(B, 1, -1)
    else:
        rope = (model.rope_cos[pos].view(B, 1, 1, D), model.rope_sin[pos].view(B, 1, 1, D))
    keys = torch.arange(max_len, device=idx.device)
    mask = (keys.view(1, max_len) <= pos.view(B, 1)).view(B, 1, 1, max_len)  # (B, 1, 1, L)
    for block, buf in zip(model.h, kv):
        attn = block.attn
        qkv = row_linear(attn.c_attn, block.ln_1(x)).view(B, H + 2 * K, 1, D)  # quantized layers: their module
        q, k, v = qkv[:, :H], qkv[:, H:H + K], qkv[:, H + K:]  # (B, H|K, 1, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # Row b's key and value go to its own position: one index_put of (B, 2, K, D) into the whole buffer.
        # Written into buf[0] and buf[1] apart (views of the input), inductor copied both caches and copied
        # them back every layer (five passes over the layer's cache per token); this write is done in place.
        buf[:, rows, :, pos] = torch.stack((k[:, :, 0], v[:, :, 0]), dim=1)
        y = F.scaled_dot_product_attention(q, buf[0], buf[1], attn_mask=mask, enable_gqa=K != H)  # (B, H, 1, D)
        x = x + row_linear(attn.c_proj, y.view(B, 1, H * D))
        x = x + _mlp(block.mlp, block.ln_2(x))
    return row_linear(model.lm_head, model.ln_f(x)).view(B, -1)  # (B, V)


class StaticDecoder:
    """A model, its static KV cache and a (compiled) fixed-shape step: prefill once, then ``step`` per token.

    ``compile=True`` wraps :func:`static_step` in ``torch.compile(fullgraph=True, dynamic=False)``
    with :func:`compile_mode` for the model's device (CUDA graphs on CUDA). The first step compiles
    (seconds on a CPU); later decoders of the same model and shape reuse the compiled code. The
    decoder owns its cache: one decoder per concurrent sequence batch. On a CPU the model's weights are
    moved to huge pages first (:func:`huge_pages`; ``huge=False`` leaves them, for an A/B measurement).
    """

    def __init__(self, model: Transformer, batch_size: int = 1, max_len: int | None = None,
                 compile: bool = False, huge: bool = True, pooled: bool = False) -> None:
        param = next(model.parameters())
        self.model, self.device = model, param.device
        self.max_len = max_len or model.cfg.block_size
        if not 0 < self.max_len <= model.cfg.block_size:
            raise ValueError(f"max_len {self.max_len} must be in [1, block_size {model.cfg.block_size}]")
        # pooled: take a cache an earlier decoder of this model gave back (close()), so a CUDA graph
        # recorded on its buffers' addresses replays instead of being recorded again (one generate call
        # after another; cudagraph trees re-record on a new static address, and fall back to no graph
        # after torch._inductor.config.triton.cudagraph_unexpected_rerecord_limit of them).
        key = (batch_size, self.max_len, param.dtype, self.device)
        free = _FREE_CACHES.setdefault(model, {}).get(key, []) if pooled else []
        self.cache = free.pop() if free else KVCache(model.cfg, batch_size, self.max_len, device=self.device,
                                                     dtype=param.dtype)
        self._pool_key = key if pooled else None
        self.compiled = compile
        if huge and self.device.type == "cpu":
            huge_pages(model.parameters())
        if compile and self.device.type == "cuda":
            # The step writes into the cache buffers; CUDA graphs replay such a mutation only for inputs
            # at a fixed address (as parameters are), else inductor skips the graph ("mutated inputs").
            for buf in self.cache.kv:
                torch._dynamo.mark_static_address(buf)
        self._step = compiled_step(model, compile_mode(self.device)) if compile else static_step

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """Logits (B, V) of the last of ``idx`` (B, T), its keys/values stored from ``start_pos`` (eager forward)."""
        logits, _ = self.model(idx, cache=self.cache, start_pos=start_pos, last_only=True)
        return logits[:, -1]

    @torch.no_grad()
    def prefill_row(self, row: int, ids: list[int]) -> torch.Tensor:
        """Logits (V,) after ``ids`` in row ``row`` alone (a new sequence joining a running batch).

        The prompt runs through a one-row cache whose keys/values are then copied into the row; the
        other rows are untouched, so a scheduler can admit a request between two ``step`` calls."""
        one = KVCache(self.model.cfg, 1, self.max_len, device=self.device, dtype=self.cache.kv[0].dtype)
        logits, _ = self.model(torch.tensor([ids], device=self.device), cache=one, start_pos=0, last_only=True)
        n = len(ids)
        for buf, src in zip(self.cache.kv, one.kv):
            buf[:, row, :, :n].copy_(src[:, 0, :, :n])
        return logits[0, -1]

    def close(self) -> None:
        """Give a pooled decoder's cache back for the model's next pooled decoder; the decoder is then spent."""
        if self._pool_key is not None and self.cache is not None:
            _FREE_CACHES.setdefault(self.model, {}).setdefault(self._pool_key, []).append(self.cache)
        self.cache = None

    @torch.no_grad()
    def step(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) for tokens ``idx`` (B,) at positions ``pos`` (B,) (int64 tensors on the model's device)."""
        logits = self._step(self.model, self.cache.kv, idx, pos)
        if self.compiled and self.device.type == "cuda":
            # A CUDA graph's output lives in a pool the next replay overwrites: hand out a copy.
            logits = logits.clone()
        return logits


def greedy_ahead(dec: StaticDecoder, ids: list[int], max_new_tokens: int, eos_id: int | None = None) -> Iterator[int]:
    """Greedy tokens after ``ids`` (which must fit the cache with the new tokens), each step queued before the
    previous token is read back.

    The token stays on the device: its argmax feeds the next step directly, and only a copy into pinned
    host memory, with an event recorded after it, goes back. On CUDA the host then waits for that copy
    alone, while the next step (a CUDA graph) runs behind it, so the host's work per token (reading the
    int, yielding it, the caller's use of it) overlaps the device's instead of adding to it: on the H200 a
    124M model's graph takes 0.44 ms and that host work about 0.3 ms (docs/benchmarks.md, GPU). The step
    after an end-of-text token is queued and thrown away. On a CPU every op runs when it is called, so
    nothing overlaps, and the tokens are those of ``decode_loop`` with greedy sampling (tested).
    """
    if not ids or len(ids) + max_new_tokens > dec.max_len:
        raise ValueError(f"{len(ids)} prompt tokens + {max_new_tokens} new ones must fit the cache's {dec.max_len}")
    if max_new_tokens <= 0:
        return
    dev = dec.device
    cuda = dev.type == "cuda"
    host = torch.empty(max_new_tokens, dtype=torch.long, pin_memory=cuda)
    tok = dec.prefill(torch.tensor([ids], device=dev)).argmax(-1)  # (1,) on the device
    pos = torch.tensor([len(ids)], device=dev)
    for i in range(max_new_tokens):
        host[i:i + 1].copy_(tok, non_blocking=cuda)
        copied = torch.cuda.Event() if cuda else None
        if copied is not None:
            copied.record()
        if i < max_new_tokens - 1:  # queue the next step behind the copy before waiting for it
            tok, pos = dec.step(tok, pos).argmax(-1), pos + 1
        if copied is not None:
            copied.synchronize()  # the copy alone: the step queued behind it keeps running
        token = int(host[i])
        yield token
        if token == eos_id:
            return


_COMPILED: dict[str | None, Callable] = {}
# Caches given back by pooled decoders, per model (weakly: a model's pool goes with it) and shape.
_FREE_CACHES: weakref.WeakKeyDictionary[Transformer, dict[tuple, list[KVCache]]] = weakref.WeakKeyDictionary()


def compiled_step(model: Transformer, mode: str | None) -> Callable:
    """One compiled ``static_step`` per mode; dynamo keeps a graph per model and cache shape under it,
    so a new decoder (one per ``generate`` call, or the serve engine's lone row) reuses what an earlier one
    compiled. The cache's strides are part of the shape; its storage offset is not (views of one buffer at
    another offset run the same graph)."""
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(static_step, fullgraph=True, dynamic=False, mode=mode)
    return _COMPILED[mode]
