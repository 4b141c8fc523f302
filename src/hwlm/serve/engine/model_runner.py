"""The model side of the engine: a slot KV cache and one packed forward per engine step.

The cache is preallocated once per layer as ``(S, K, max_len, D)`` for ``S`` slots (one
:class:`hwlm.model.KVCache` of batch ``S``); a running sequence owns one slot for its lifetime.

A step is a list of rows ``(tokens, slot, start)``: a decoding sequence's one new token, or a
chunk of a prompt being prefilled. :meth:`ModelRunner.step` runs them all in one forward
("chunked prefill mixed into decode", as vLLM and Sarathi-Serve do): the rows' tokens are packed
into one ``(N, C)`` matrix for every linear layer (no padding, the weights read once per step for
prefills and decodes together), k/v are written at ``(slot, position)`` per token, and only attention
pads the rows to ``(R, H, T, L)`` with a boolean mask (row r's token t sees keys ``[0, start_r + t]``).
The logits come back for the last token of each row only.

Two cases keep exactly ``hwlm generate``'s numbers: one decoding row takes
``Transformer.decode_step``, and one prefill row ``Transformer.forward`` on a one-slot view of the
cache (the model's own bottom-right causal mask for a chunk that starts past 0). On the CPU the runner
packs the model's linear weights once for oneDNN (:mod:`hwlm.model.packing`, as ``hwlm generate`` and
``hwlm bench infer`` do, so the three run the same kernels and the planner's calibration describes the
engine): in fp32 2-3x MKL's gemv and sgemm at 1-8 rows. In bf16 the cache and attention are fp32, and
every step but a lone decoding row is the packed one (about 1.7x faster than the module path at 1 and 8
rows on ``mid``, docs/benchmarks.md, "Where the time went"); a lone decoding row is ``decode_step`` on the
packed bf16 weights and the fp32 cache, 2.3-2.6 against 2.8-3.5 ms for the packed step on ``mid``.

``compile_lone()`` (``hwlm serve --compile``, fp32 on the CPU) gives a lone decoding row a compiled step
instead: :func:`hwlm.model.decoding.static_step` under ``torch.compile`` on the slot's view of the cache,
narrowed to a length bucket (at most three: a quarter, a half and all of the context, none under 64), so a
graph serves every slot and a few graphs every position. Inductor writes each one-row linear as one fused
reduction over both cores, which on the 2-core EPYC streamed the weights faster than oneDNN's packed gemv
on some days and level on others (docs/benchmarks.md, serving, session 10), so a lone row runs whichever of
the two has been faster lately. Its sums run in another order than the batched step's: logits agree to
round-off (tested within 1e-4), so after a near tie a lone row's greedy token can differ from the one a
batched step would give. Off by default for that reason.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from hwlm.model import KVCache, Transformer
from hwlm.model.decoding import compiled_step
from hwlm.model.packing import pack_linears
from hwlm.model.transformer import apply_rope, linear, mlp_activation
from hwlm.serve.engine.threads import Fastest

__all__ = ["ModelRunner", "Row"]

Row = tuple[list[int], int, int]  # (tokens, slot, start position)


class ModelRunner:
    """Owns the model and the slot cache; only the engine thread calls it."""

    def __init__(self, model: Transformer, num_slots: int) -> None:
        self.model, self.cfg = model, model.cfg
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.num_slots, self.max_len = num_slots, self.cfg.block_size
        self.context, self.vocab_size = self.cfg.block_size, self.cfg.vocab_size
        self.packed = pack_linears(model) if self.device.type == "cpu" else 0  # how many layers
        # With packed bf16 weights k/v stay in fp32 (a lone decoding row attends through decode_step, which casts): CPU
        # SDPA in bf16 takes about 5x its fp32 time at these sizes (0.39 against 0.07 ms for 8 rows x 80 keys
        # on the EPYC), and an fp32 cache spares casting every layer's keys and values every step (for twice
        # the bytes: 75 MB for mid's 32 slots, against 38).
        self.kv_dtype = torch.float32 if self.packed and self.dtype == torch.bfloat16 else self.dtype
        with torch.inference_mode():
            self.cache = KVCache(self.cfg, batch_size=num_slots, device=self.device, dtype=self.kv_dtype)
            self.state = model.decode_state()  # for decode_step at batch 1, built once
        self.views = [self._slot_view(s) for s in range(num_slots)]
        self.lone_step: Any = None  # the compiled lone decode step (compile_lone), or None: decode_step
        self.lone_path: Fastest | None = None  # which of it and decode_step a lone row runs
        self.buckets: list[int] = []  # its cache lengths, ascending

    def compile_lone(self, steps: int = 8) -> dict:
        """Compile the lone decoding row's step for each length bucket and time it against ``decode_step``
        (``steps`` steps each, taking turns); returns what was found. From then on a lone decoding row runs
        whichever of the two has been faster lately (:class:`Fastest`, which starts with the start-up
        timing's winner and looks at the other every 256 lone steps): which one wins moved from day to day.

        Only an fp32 model on the CPU: a bf16 model's cache is fp32 (the step attends in the weights' dtype),
        and on CUDA a graph per slot address would be recorded (not built). Compiling takes seconds per bucket
        on a CPU (22 s for ``mid``'s three on the 2-core EPYC), once per process; inductor's cache on disk
        shortens later starts (4-5 s for the same three). Slot 0's keys and values are written while timing:
        call it before serving."""
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return {"compiled": False, "why": f"the compiled lone step is for fp32 on the CPU, not "
                                              f"{str(self.dtype).removeprefix('torch.')} on {self.device.type}"}
        n = self.max_len
        self.buckets = sorted({max(min(64, n), n // d) for d in (4, 2, 1)})
        step = compiled_step(self.model, None)  # the one hwlm generate --compile uses
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in self.buckets:  # the first call of each shape compiles it
                self._compiled(step, 0, 0, b - 1)
        seconds = time.perf_counter() - t0
        times: dict[str, list[float]] = {"compiled": [], "eager": []}
        with torch.inference_mode():
            for i in range(steps + 1):
                for name in times:
                    t = time.perf_counter()
                    if name == "compiled":
                        self._compiled(step, 0, 0, i)
                    else:
                        self.model.decode_step(0, self.views[0], i, self.state)
                    times[name].append(time.perf_counter() - t)
        ms = {name: 1e3 * sorted(ts[1:])[len(ts[1:]) // 2] for name, ts in times.items()}  # the first warms up
        first = min(ms, key=ms.get)
        self.lone_step = step
        # medians of 8 steps, and a look at the other path for 8 steps every 256 (3%): with windows of 4 the
        # choice flipped on single slow steps and a fifth of the lone steps ran on the slower path
        self.lone_path = Fastest((first, "eager" if first == "compiled" else "compiled"), window=8, every=256,
                                 probe_steps=8)
        return {"compiled": True, "compile_s": round(seconds, 1), "buckets": self.buckets,
                "lone_ms": {k: round(v, 3) for k, v in ms.items()}, "first": first}

    def _lone(self, token: int, slot: int, pos: int) -> torch.Tensor:
        """A lone decoding row on the path :attr:`lone_path` picks, timed for it."""
        path = self.lone_path.pick()
        t = time.perf_counter()
        if path == "compiled":
            logits = self._compiled(self.lone_step, token, slot, pos)
        else:
            logits = self.model.decode_step(token, self.views[slot], pos, self.state).view(1, -1)
        self.lone_path.record(path, time.perf_counter() - t)
        return logits

    def _compiled(self, step: Any, token: int, slot: int, pos: int) -> torch.Tensor:
        """Logits (1, V) of the compiled lone step: ``token`` at ``pos`` of ``slot``, on the smallest bucket
        holding ``pos``. The views share the slot cache's strides, so one graph serves every slot."""
        b = next(b for b in self.buckets if b > pos)
        kv = [buf.narrow(1, slot, 1).narrow(3, 0, b) for buf in self.cache.kv]
        return step(self.model, kv, torch.tensor([token], device=self.device), torch.tensor([pos], device=self.device))

    def _slot_view(self, slot: int) -> KVCache:
        """A batch-1 KVCache whose buffers are views of slot ``slot``: writes land in the slot cache."""
        view = KVCache.__new__(KVCache)
        view.max_len, view.batch_size = self.max_len, 1
        view.kv = [kv.narrow(1, slot, 1) for kv in self.cache.kv]  # (2, 1, K, max_len, D) each
        view.k = [kv[0] for kv in view.kv]
        view.v = [kv[1] for kv in view.kv]
        return view

    @property
    def cache_bytes(self) -> int:
        return sum(kv.numel() * kv.element_size() for kv in self.cache.kv)

    def prefill(self, tokens: list[int], slot: int, start_pos: int) -> torch.Tensor:
        """Write ``tokens`` into ``slot`` from ``start_pos``; logits (V,) of the last one."""
        return self.step([(tokens, slot, start_pos)])[0]

    def decode(self, tokens: list[int], slots: list[int], positions: list[int]) -> torch.Tensor:
        """Logits (B, V) for one new token per row, row b at ``positions[b]`` of ``slots[b]``."""
        return self.step([([t], s, p) for t, s, p in zip(tokens, slots, positions)])

    @torch.inference_mode()
    def step(self, rows: list[Row]) -> torch.Tensor:
        """Logits (R, V) of each row's last token, after writing every row's tokens into its slot."""
        if len(rows) == 1:
            tokens, slot, start = rows[0]
            if len(tokens) == 1 and self.lone_step is not None:
                return self._lone(tokens[0], slot, start)
            if len(tokens) == 1:  # decode_step attends in the cache's dtype (fp32 under bf16 weights too)
                return self.model.decode_step(tokens[0], self.views[slot], start, self.state).view(1, -1)
            if self.kv_dtype != self.dtype:  # a bf16 prompt on the fp32 cache: the packed step
                return self._packed(rows)
            idx = torch.tensor([tokens], device=self.device)
            logits, _ = self.model(idx, cache=self.views[slot], start_pos=start, last_only=True)
            return logits[0, -1:]
        return self._packed(rows)

    def _packed(self, rows: list[Row]) -> torch.Tensor:
        m, cfg, dev = self.model, self.cfg, self.device
        H, K, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        R, T = len(rows), max(len(t) for t, _, _ in rows)
        lens = [len(t) for t, _, _ in rows]
        flat = torch.tensor([t for toks, _, _ in rows for t in toks], device=dev)  # (N,)
        pos = torch.tensor([s + i for (_, _, s), n in zip(rows, lens) for i in range(n)], device=dev)  # (N,)
        slot_of = torch.tensor([slot for (_, slot, _), n in zip(rows, lens) for _ in range(n)], device=dev)
        row_of = torch.tensor([r for r, n in enumerate(lens) for _ in range(n)], device=dev)  # (N,)
        t_of = torch.tensor([i for n in lens for i in range(n)], device=dev)  # (N,)
        starts = torch.tensor([s for _, _, s in rows], device=dev)  # (R,)
        slot_list = [slot for _, slot, _ in rows]
        slots = torch.tensor(slot_list, device=dev)  # (R,)
        N = flat.numel()
        L = max(s + n for (_, _, s), n in zip(rows, lens))
        # Row r's token t (at position starts[r] + t) sees keys [0, starts[r] + t]; a padding query
        # (t >= lens[r]) sees the same and is dropped afterwards.
        qpos = starts.view(R, 1) + torch.arange(T, device=dev).view(1, T)  # (R, T)
        mask = (torch.arange(L, device=dev).view(1, 1, L) <= qpos.view(R, T, 1)).view(R, 1, T, L)
        # The engine hands out the lowest free slots, so the rows usually are a run of slots, in order: attention
        # reads them as a view. Rows with gaps between them (a slot just finished, or prefilling in another
        # step) read the span from their lowest to their highest slot as a view too, while it is at most twice
        # the rows: the gaps' slots attend to key 0 alone and are dropped. Copying the rows' keys and values
        # out (index_select, any other case) reads and writes them: 5 ms of a 23 ms step at 32 rows of mid fp32.
        lo = min(slot_list)
        span = max(slot_list) + 1 - lo
        in_order = slot_list == list(range(lo, lo + R))
        in_span = not in_order and span <= 2 * R
        if in_span:
            at = slots - lo  # (R,) each row's place in the span
            span_mask = mask.new_zeros(span, 1, T, L)
            span_mask[..., 0] = True
            span_mask[at] = mask
        x = m.wte(flat)  # (N, C)
        rope = None
        if m.wpe is not None:
            x = x + m.wpe(pos)  # each token its own learned position
        else:
            rope = (m.rope_cos[pos].view(N, 1, D), m.rope_sin[pos].view(N, 1, D))  # (N, 1, D)
        for layer, block in enumerate(m.h):
            attn = block.attn
            qkv = linear(block.ln_1(x), attn.c_attn).view(N, H + 2 * K, D)
            q, kv = qkv[:, :H], qkv[:, H:].view(N, 2, K, D)  # (N, H, D); k and v (N, 2, K, D)
            if rope is not None:
                q, kv = apply_rope(q, *rope), torch.stack((apply_rope(kv[:, 0], *rope), kv[:, 1]), 1)
            ck, cv = self.cache.k[layer], self.cache.v[layer]  # (S, K, max_len, D)
            # Token n's k and v at (slot_of[n], :, pos[n]) in one write (no padding is written): the layer's
            # buffer is (2, S, K, max_len, D), and indexing it at [:, slot_of, :, pos] is (N, 2, K, D).
            self.cache.kv[layer][:, slot_of, :, pos] = kv.to(ck.dtype)
            if in_order or in_span:
                keys, values = ck[lo:lo + span, :, :L], cv[lo:lo + span, :, :L]
            else:
                keys, values = ck[:, :, :L].index_select(0, slots), cv[:, :, :L].index_select(0, slots)
            if T == 1:
                qp = q.unsqueeze(2)  # (R, H, 1, D): every row one token, nothing to pad
            else:
                qp = q.new_zeros(R, T, H, D)
                qp[row_of, t_of] = q
                qp = qp.transpose(1, 2)  # (R, H, T, D)
            if in_span:
                y = F.scaled_dot_product_attention(qp.new_zeros(span, H, T, D).index_copy_(0, at, qp).to(keys.dtype),
                                                   keys, values, attn_mask=span_mask, enable_gqa=K != H)[at]
            else:
                y = F.scaled_dot_product_attention(qp.to(keys.dtype), keys, values, attn_mask=mask, enable_gqa=K != H)
            y = y.to(x.dtype)  # (R, H, T, D)
            y = y.reshape(R, H * D) if T == 1 else y.transpose(1, 2)[row_of, t_of].reshape(N, H * D)
            x = x + linear(y, attn.c_proj)
            x = x + linear(mlp_activation(linear(block.ln_2(x), block.mlp.c_fc), block.mlp.gated), block.mlp.c_proj)
        last = torch.tensor(lens, device=dev).cumsum(0) - 1  # (R,) each row's last token in the packing
        return linear(m.ln_f(x[last]), m.lm_head)  # (R, V)
