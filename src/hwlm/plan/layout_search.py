"""The layout search of :mod:`hwlm.plan.training`: candidate layouts (data, tensor, pipeline and expert
parallel degrees, ZeRO stage, micro-batch, recompute, virtual stages), the fewest recomputed layers that make
one fit, and the fastest that fits, skipping exactly what a lower bound on its time shows cannot win.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterator

from hwlm.errors import PlanError
from hwlm.plan.parallel import USABLE_MEMORY_FRACTION, Layout, MemoryBreakdown
from hwlm.plan.train_cost import (_QUIET, _Ctx, _compute, _flops_per_token, _memory, _model_comm, _relayout, _searched,
                                   _timing)


def _pow2_upto(n: int) -> list[int]:
    return [2 ** i for i in range(int(math.log2(max(n, 1))) + 1)]


def _virtual_stage_choices(fixed: dict[str, Any], pp: int, n_layers: int) -> list[int]:
    """Model chunks per device to try. Interleaved 1F1B (v chunks per device) shrinks the bubble
    v-fold for v-fold point-to-point traffic (Narayanan et al. 2021, section 2.2.2), so the best v
    depends on the link: ``schedule="interleaved"`` tries every v from 2 up to one layer per chunk
    and keeps the fastest; ``"1f1b"`` is plain 1F1B; no schedule tries 1, 2 and 4."""
    if fixed.get("virtual_stages"):
        return [fixed["virtual_stages"]]
    if pp == 1 or fixed.get("schedule") == "1f1b":
        return [1]
    if fixed.get("schedule") == "interleaved":
        return list(range(2, max(2, n_layers // pp) + 1))
    return [1, 2, 4]


def _candidate_fields(ctx: _Ctx, fixed: dict[str, Any]) -> Iterator[tuple[int, int, int, int, Any, int, int, int]]:
    """(dp, tp, pp, zero_stage, recompute, micro_batch, virtual_stages, ep) of the layouts to try, simplest
    first: dp with ZeRO/FSDP, then tp inside the node, then pp. Fields, not Layouts: the search skips most
    of them before it needs one."""
    spec, n = ctx.model.spec, ctx.devices
    tps = [fixed["tp"]] if fixed.get("tp") else [
        x for x in _pow2_upto(min(n, ctx.dev.scale_up_devices, spec.n_heads)) if spec.n_heads % x == 0]
    pps = [fixed["pp"]] if fixed.get("pp") else [x for x in _pow2_upto(min(n, spec.n_layers))]
    zeros = [fixed["zero_stage"]] if fixed.get("zero_stage") is not None else [0, 1, 2, 3]
    eps = [fixed["ep"]] if fixed.get("ep") else [1] + [x for x in _pow2_upto(min(n, spec.n_experts))[1:]
                                                       if spec.n_experts > 1 and spec.n_experts % x == 0]
    rcs = [fixed["recompute"]] if fixed.get("recompute") else ["selective", "partial"]
    mb = fixed.get("micro_batch") or 1
    seqs = ctx.batch_tokens / ctx.seq_len
    for pp in pps:
        vss = _virtual_stage_choices(fixed, pp, spec.n_layers)
        for tp in tps:
            # Pipeline only once tensor parallelism fills its domain (Narayanan et al. 2021, takeaway 1).
            if n % (tp * pp) or (n // (tp * pp)) * mb > seqs or pp > 1 and tp != tps[-1] and not fixed.get("pp"):
                continue
            dp = n // (tp * pp)
            eps_dp = [e for e in eps if dp % e == 0]
            for vs in (v for v in vss if pp * v <= spec.n_layers):
                for rc in rcs:
                    for z in zeros:
                        for ep in eps_dp:
                            yield dp, tp, pp, z, rc, mb, vs, ep


def _candidates(ctx: _Ctx, fixed: dict[str, Any]) -> list[Layout]:
    """The layouts of :func:`_candidate_fields`, in its order."""
    return [Layout(dp=dp, tp=tp, pp=pp, zero_stage=z, recompute=rc, micro_batch=mb, virtual_stages=vs, ep=ep)
            for dp, tp, pp, z, rc, mb, vs, ep in _candidate_fields(ctx, fixed)]


def _fit_partial(ctx: _Ctx, lay: Layout) -> Layout | None:
    """The fewest fully recomputed layers (rest selective) that make ``lay`` fit; None if none do."""
    L = ctx.model.spec.n_layers

    def mem(k: int) -> MemoryBreakdown:
        return _memory(ctx, _relayout(lay, recompute="partial", recompute_layers=k))
    if mem(0).fits:  # k = 0 fitting implies every k does
        return _relayout(lay, recompute="partial", recompute_layers=0)
    if not mem(L).fits:
        return None
    # Memory is linear in k from k = 1 on (k = 0 lacks the one recomputed layer's set that is alive
    # again in its backward, so a line through k = 0 would stop a layer or more short).
    m1, mL = mem(1), mem(L)
    excess = m1.total - m1.capacity * USABLE_MEMORY_FRACTION
    k = 1 if excess <= 0 or L == 1 else min(L, 1 + math.ceil(excess / ((m1.total - mL.total) / (L - 1))))
    while k < L and not mem(k).fits:  # rounding: at most a step or two
        k += 1
    return _relayout(lay, recompute="full" if k == L else "partial", recompute_layers=k if k < L else 0)


def _time_lower_bound(ctx: _Ctx, lay: Layout) -> float:
    """A bound :func:`_timing`'s time never goes under, so the layout search can skip layouts that cannot
    win: the time without its data-parallel traffic (>= 0), that is (compute + tp and pp communication) x
    (1 + the pipeline bubble's (pp-1)/(v m)) with the long-run overhead, less 1e-9 for rounding. A layout
    with recompute="partial" and no layers chosen yet is bounded as if none were recomputed (each
    recomputed layer only adds time: compute = max(device time, host time), all terms grow with it)."""
    spec = ctx.model.spec
    frac = lay.recompute_fraction(spec.n_layers)
    flops = ctx.tokens * _flops_per_token(spec, ctx.seq_len)
    compute = _searched(ctx, _QUIET, ("compute", lay.dp, lay.tp, lay.pp, lay.micro_batch, frac),
                        lambda: _compute(ctx, lay, _QUIET, flops))
    comm = _searched(ctx, _QUIET, ("comm", lay.dp, lay.tp, lay.pp, lay.virtual_stages, lay.ep, frac),
                     lambda: _model_comm(ctx, lay, _QUIET))
    m = ctx.batch_tokens / ctx.seq_len / (lay.dp * lay.micro_batch)
    busy = compute + comm["tp"] + comm["pp"]
    return busy * (1.0 + (lay.pp - 1) / (lay.virtual_stages * m)) / (1.0 - ctx.pri.train_overhead) * (1.0 - 1e-9)


def _choose(ctx: _Ctx, fixed: dict[str, Any]) -> tuple[Layout, bool]:
    """The fastest fitting layout (a simpler one wins unless the other is >3% faster); else the smallest."""
    best: tuple[float, Layout] | None = None
    seen: set[tuple[int, int, int, str, int, int]] = set()
    bounds: dict[tuple[Any, ...], float] = {}
    tried = False
    for dp, tp, pp, z, rc, mb, vs, ep in _candidate_fields(ctx, fixed):
        tried = True
        # More ZeRO sharding only adds traffic, so for a fixed recompute mode the first stage that
        # fits is the one; under partial recompute it also cuts the recomputed layers, so try each.
        key = (tp, pp, vs, rc, z if rc == "partial" else -1, ep)
        if key in seen:
            continue
        # A layout that cannot beat the best even at its bound is skipped before its memory is counted. The
        # bound reads neither the ZeRO stage nor (before partial recompute is fitted: as if no layer were
        # recomputed) the recompute mode, so one of the same key further on has it too; the best only
        # improves, so that one is skipped as well, as ``seen`` would have skipped it.
        if best is not None:
            group = (dp, tp, pp, vs, ep, mb, rc == "full")
            bound = bounds.get(group)
            if bound is None:
                bound = bounds[group] = _time_lower_bound(ctx, Layout(
                    dp=dp, tp=tp, pp=pp, zero_stage=z, recompute=rc, micro_batch=mb, virtual_stages=vs, ep=ep))
            if bound >= best[0] * 0.97:
                continue
        lay = Layout(dp=dp, tp=tp, pp=pp, zero_stage=z, recompute=rc, micro_batch=mb, virtual_stages=vs, ep=ep)
        if rc == "partial":
            fitted = _fit_partial(ctx, lay)
            if fitted is None or fitted.recompute_fraction(ctx.model.spec.n_layers) == 0:
                continue  # selective already covers k = 0
            lay = fitted
        if not _memory(ctx, lay).fits:
            continue
        seen.add(key)
        if best is not None and _time_lower_bound(ctx, lay) >= best[0] * 0.97:
            continue  # even its bound could not beat the best: the choice is unchanged
        time = _timing(ctx, lay)["time"]
        if best is None or time < best[0] * 0.97:
            best = (time, lay)
    if best is not None:
        return best[1], True
    if not tried:
        raise PlanError(f"no layout of {ctx.devices} devices fits the given tp/pp and a global batch of "
                        f"{ctx.batch_tokens / ctx.seq_len:.0f} sequences; raise --global-batch or set --tp/--pp")
    full = [replace(c, recompute="full") if c.recompute == "partial" else c for c in _candidates(ctx, fixed)]
    return min(full, key=lambda c: _memory(ctx, c).total), False


def _grow_micro_batch(ctx: _Ctx, lay: Layout) -> Layout:
    """Double the micro-batch while it divides the batch per device, fits and is no slower.

    Fewer, larger micro-steps pay the per-kernel cost fewer times (a small model gets faster; a large
    one stays as fast), as training scripts use the largest micro-batch that fits. Not under
    pipelining, where fewer micro-batches per step would also widen the bubble."""
    if lay.pp > 1:
        return lay
    per_dev = ctx.batch_tokens / ctx.seq_len / lay.dp
    best, t_best = lay, _timing(ctx, lay)["time"]
    mb = lay.micro_batch * 2
    while mb <= per_dev and per_dev % mb == 0:
        cand = replace(best, micro_batch=mb)
        if not _memory(ctx, cand).fits:
            break
        t = _timing(ctx, cand)["time"]
        if t > t_best * (1 + 1e-9):
            break
        best, t_best, mb = cand, t, mb * 2
    return best


def _max_micro_batch(ctx: _Ctx, lay: Layout, limit: int = 1 << 16) -> int:
    """The largest power-of-two micro-batch that fits ``lay`` (0: not even one sequence)."""
    if not _memory(ctx, _relayout(lay, micro_batch=1)).fits:
        return 0
    mb = 1
    while mb * 2 <= limit and _memory(ctx, _relayout(lay, micro_batch=mb * 2)).fits:
        mb *= 2
    return mb


def _smallest_fitting(ctx: _Ctx, fixed: dict[str, Any]) -> str | None:
    """The fewest devices (powers of two, then whole nodes) on which some layout fits."""
    counts = sorted({*(2 ** i for i in range(21)), *(ctx.dev.devices_per_node * 2 ** i for i in range(18))})
    free = {k: v for k, v in fixed.items() if k in ("recompute", "micro_batch", "virtual_stages", "schedule")}
    for n in counts:
        if n <= ctx.devices:
            continue
        c = replace(ctx, devices=n, batch_tokens=max(ctx.batch_tokens, n * ctx.seq_len))
        for lay in _candidates(c, free):
            if lay.recompute == "partial":
                lay = _fit_partial(c, lay) or lay
            if _memory(c, lay).fits:
                return f"{n} x {ctx.dev.id} with {lay.describe()}"
    return None
