"""Serving under load: continuous batching of a request stream, simulated step by step.

``plan infer`` is the latency of one batch; a server under traffic runs a different loop (Orca, Yu et al.
2022, OSDI; vLLM, Kwon et al. 2023, arXiv:2309.06180): every engine step decodes one token for each running
sequence and spends the rest of a token budget (``chunk_tokens``) on the prompts of newly admitted
requests (chunked prefill, Agrawal et al. 2024, arXiv:2403.02310). A request is admitted while the
engine's cap on running sequences (``max_batch``, per engine instance: each of a mixture-of-experts
replica's ep data-parallel attention groups has its own, as vLLM's DP ranks do) and the KV cache (the memory
left after the weights) allow it; its whole length is reserved, as a preemption-free scheduler does.

One step is one forward over the running rows and the step's prompt chunks, priced by
:class:`hwlm.plan.serve_step.StepModel` (the roofline of :mod:`hwlm.plan.inference`, with the calibration's
measured decode and prefill rates by rows where there are some). The simulation keeps the sum of the
running contexts, the longest one and a heap of finishing steps, so a few thousand requests take
milliseconds. Arrivals: a closed loop of ``concurrency`` users (a new request when one finishes), or
Poisson arrivals at ``rate`` per second (seeded). Percentiles are over the requests after a warm-up tenth.

    >>> s = estimate_serving(ServingJob(model="llama-3.1-8b", hardware="h100-sxm", concurrency=32))  # doctest: +SKIP
    >>> s.output_tokens_per_s, s.ttft_p90_s, s.itl_p90_s                                             # doctest: +SKIP
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

from hwlm.errors import PlanError
from hwlm.formulas import WEIGHT_BYTES
from hwlm.plan.catalog import Device
from hwlm.plan.collectives import library_for
from hwlm.plan.efficiency import GRID_SOURCE, PUE_SOURCE
from hwlm.plan.experts import EP_SOURCE, check_ep, ep_comm, weights_per_device
from hwlm.plan.explain import Term, Terms
from hwlm.plan.inference import PADS_HEADS, _context_check, _kv_per_token_device, pad_heads
from hwlm.plan.jobs import ServingJob, resolve_hardware
from hwlm.plan.kv_cache import kv_cache_dtype
from hwlm.plan.models import Model, get_model
from hwlm.plan.parallel import USABLE_MEMORY_FRACTION
from hwlm.plan.serve_step import StepModel, curve_at, step_model
from hwlm.plan.software import Stack, default_engine, get_engine

__all__ = ["ServingEstimate", "estimate_serving", "StepModel"]

MAX_BATCH_PER_DP_RANK = ("vLLM (vllm-project/vllm 01e4fce) docs/serving/data_parallel_deployment.md: 'When sizing DP "
                         "deployments, remember that `--max-num-seqs` applies per DP rank'; each DP rank is its own "
                         "engine core process")
MAX_FLEET_DEVICES = 1 << 17  # 131,072 devices: beyond any fleet in the catalog's price lists
WARMUP_FRACTION = 0.1


@dataclass
class ServingEstimate:
    """Continuous batching under a load, per replica (``devices`` each) and for the fleet (``replicas``)."""

    model: str
    hardware: str
    devices: int
    engine: str
    precision: str
    prompt_len: int
    gen_len: int
    concurrency: int | None
    rate: float | None
    replicas: int
    requests_per_s: float
    output_tokens_per_s: float
    mean_batch: float
    batch_limit: int
    limited_by: str
    kv_capacity_tokens: int
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p90_s: float
    itl_p99_s: float
    capacity_requests_per_s: float
    single_ttft_s: float
    single_itl_s: float
    cost_per_million_tokens_usd: float | None
    energy_per_token_j: float | None = None   # None: no TDP in the catalog and no --power-w
    ep: int = 1                               # expert-parallel groups per replica (devices / ep per group)
    terms: list[Term] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "terms"}
        return {"kind": "hwlm-plan-serve", **d, "terms": [t.to_dict() for t in self.terms]}


@dataclass
class _Run:
    ttft: list[float]
    itl: list[tuple[float, int]]   # (step seconds, tokens emitted at that spacing)
    done: int
    elapsed: float
    batch_sum: float
    steps: int


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _weighted_percentile(pairs: list[tuple[float, int]], q: float) -> float:
    pairs = sorted(p for p in pairs if p[1] > 0)
    total = sum(n for _, n in pairs)
    if not total:
        return math.nan
    acc = 0
    for v, n in pairs:
        acc += n
        if acc >= q * total:
            return v
    return pairs[-1][0]


def simulate(sm: StepModel, prompt: int, gen: int, n: int, batch_cap: int, chunk: int, *,
             concurrency: int | None = None, rate: float | None = None, seed: int = 0, stagger: float = 0.0) -> _Run:
    """Run ``n`` requests through the continuous-batching loop; see the module docstring."""
    rng = random.Random(seed)
    if concurrency is not None:
        # Users start at random moments over ``stagger`` seconds (about one request's duration), so that
        # equal requests do not run in lockstep as no real set of users does.
        arrivals = sorted(rng.uniform(0.0, stagger) for _ in range(min(concurrency, n)))
    else:
        t, arrivals = 0.0, []
        for _ in range(n):
            t += rng.expovariate(rate)  # type: ignore[arg-type]
            arrivals.append(t)
    next_arrival, issued = 0, len(arrivals)
    waiting: list[float] = []          # arrival times, FCFS
    prefilling: list[list[float]] = []  # [arrival, prompt tokens left]
    finish: list[tuple[int, int]] = []  # heap of (step index of the last token, request id)
    running, ctx_sum, clock, step = 0, 0.0, 0.0, 0
    ttft: list[float] = []
    itl: list[tuple[float, int]] = []
    done, batch_sum, warm = 0, 0.0, int(n * WARMUP_FRACTION)

    def longest() -> float:
        """Context of the longest-running decode row: all requests have one length, so it is the one that
        finishes first, ``finish[0]`` steps from now short of its full prompt + gen tokens."""
        return float(prompt + gen - (finish[0][0] - step)) if finish else 0.0

    def retire(ended: int) -> None:
        """Requests whose last token came out leave the batch (``ended`` more already left without
        decoding); in a closed loop each finished user sends the next request at once."""
        nonlocal running, ctx_sum, done, issued
        while finish and finish[0][0] <= step:
            heapq.heappop(finish)
            running -= 1
            ctx_sum -= prompt + gen
            ended += 1
        done += ended
        if concurrency is not None:
            more = min(ended, n - issued)
            arrivals.extend([clock] * more)
            issued += more

    while done < n:
        while next_arrival < len(arrivals) and arrivals[next_arrival] <= clock:
            waiting.append(arrivals[next_arrival])
            next_arrival += 1
        while waiting and running + len(prefilling) < batch_cap:
            prefilling.append([waiting.pop(0), float(prompt)])
        if running == 0 and not prefilling:  # idle until the next arrival
            clock = arrivals[next_arrival]
            continue
        if not prefilling and (not waiting or running >= batch_cap):
            # Pure decode until the next finish or arrival: leap over those k equal steps at once, timing
            # them at their mean context (a step's time is linear in the context read).
            k = finish[0][0] - step
            if next_arrival < len(arrivals) and running < batch_cap:
                dt1 = sm.seconds(running, ctx_sum, max_ctx=longest())
                k = min(k, max(1, int((arrivals[next_arrival] - clock) / dt1)))
            dt = sm.seconds(running, ctx_sum + running * (k - 1) / 2, max_ctx=longest() + (k - 1) / 2)
            clock += k * dt
            step += k
            batch_sum += running * k
            itl.append((dt, running * k if done >= warm else 0))
            ctx_sum += running * k
            retire(0)
            continue
        # vLLM-style engines count decode tokens against the step's budget; hwlm's spends it on prompts only.
        budget = max(0, chunk - running) if sm.engine.budget_counts_decode else chunk
        first, chunks = [], []
        for req in prefilling:
            if budget <= 0:
                break
            take = min(budget, req[1])
            chunks.append((int(take), prompt - req[1]))  # (tokens, start position)
            req[1] -= take
            budget -= take
            if req[1] <= 0:
                first.append(req)
        if sm.engine.fused_prefill:  # one packed forward: the chunks ride in the decode step
            dt = sm.seconds(running, ctx_sum, chunks, max_ctx=longest())
        else:  # each prompt chunk is a forward of its own, then one decode forward for the running rows
            dt = sum(sm.seconds(0, 0.0, [c]) for c in chunks) + (
                sm.seconds(running, ctx_sum, max_ctx=longest()) if running else 0.0)
        clock += dt
        step += 1
        batch_sum += running
        if running:
            itl.append((dt, running) if done >= warm else (dt, 0))
            ctx_sum += running
        ended = 0
        if first:  # chunks are taken in order, so the finished prompts are the first ones
            del prefilling[:len(first)]
        for req in first:  # the prompt's last chunk also yields the first output token
            if done >= warm:
                ttft.append(clock - req[0])
            if gen > 1:
                heapq.heappush(finish, (step + gen - 1, 0))
                running += 1
                ctx_sum += prompt + 1
            else:
                ended += 1
        retire(ended)
    return _Run(ttft, itl, done, clock, batch_sum / max(step, 1), step)


def _capacity(job: ServingJob, m: Model, dev: Device, engine: Stack) -> tuple[int, str, int, float]:
    """(running-sequence cap, what limits it, KV capacity in tokens, free bytes)."""
    ep = job.ep or 1
    tp = job.devices // ep
    sm_tok = _kv_per_token_device(m, tp, kv_cache_dtype(job.precision, engine, dev, job.calibration, True).bytes)[0]
    w = weights_per_device(m, WEIGHT_BYTES[job.precision], tp, ep)
    ws = engine.chunk_tokens * min(1.0, 2048 / engine.chunk_tokens) * (4 * m.spec.d_model + 3 * m.spec.ff / tp) * 2
    free = dev.memory_bytes * USABLE_MEMORY_FRACTION - w - ws
    kv_tokens = ep * int(free // sm_tok) if free > 0 else 0  # each of the ep attention groups holds its own
    by_kv = kv_tokens // (job.prompt_len + job.gen_len)
    # The engine's cap holds per engine instance: each of the ep attention (data-parallel) groups runs its own
    # scheduler, as vLLM's DP ranks do (MAX_BATCH_PER_DP_RANK).
    per_rank = job.max_batch or engine.max_batch
    cap = per_rank * ep
    if by_kv < 1:
        raise PlanError(f"{m.name} in {job.precision} does not fit on {job.devices} x {dev.id} with room for one "
                        f"{job.prompt_len + job.gen_len}-token request ({w / 1e9:.1f} GB of weights per device); "
                        "use more devices per replica (--devices) or a narrower --precision")
    if by_kv < cap:
        return by_kv, "kv-cache", kv_tokens, free
    return cap, f"engine max_batch {per_rank}" + (f" x {ep} data-parallel ranks" if ep > 1 else ""), kv_tokens, free


def _single(job: ServingJob, m: Model, dev: Device, engine: Stack, tp: int) -> tuple[float, float]:
    """(TTFT, ITL) of one request alone on ``tp`` devices."""
    j = replace(job, devices=tp, concurrency=1, rate=None)
    sm = step_model(j, m, dev, engine)
    chunk = engine.chunk_tokens if engine.chunk_tokens < (1 << 30) else job.prompt_len + 1
    r = simulate(sm, job.prompt_len, job.gen_len, 2, 1, chunk, concurrency=1)
    return max(r.ttft or [0.0]), _weighted_percentile(r.itl, 0.5)


def _what_would_work(job: ServingJob, m: Model, dev: Device, engine: Stack, name: str) -> str:
    """The first larger tensor-parallel replica on this hardware whose lone request meets the SLO."""
    slo = job.slo_ttft if name == "--slo-ttft" else job.slo_itl
    tp, ep = job.devices * 2, job.ep or 1
    while tp <= max(dev.devices_per_node, dev.scale_up_devices):
        if m.spec.n_heads % (tp // ep) == 0 or dev.vendor in PADS_HEADS:
            ttft, itl = _single(job, pad_heads(m, tp // ep)[0], dev, engine, tp)
            got = ttft if name == "--slo-ttft" else itl
            if got <= slo:  # type: ignore[operator]
                return f"use --devices {tp} ({got:.3g} s alone), a narrower precision or faster hardware"
        tp *= 2
    return "no replica of this hardware meets it: use a narrower precision or faster hardware"


def _run(job: ServingJob, sm: StepModel, cap: int, chunk: int, n: int, *, concurrency: int | None = None,
         rate: float | None = None, stagger: float = 0.0) -> _Run:
    return simulate(sm, job.prompt_len, job.gen_len, n, cap, chunk, concurrency=concurrency, rate=rate,
                    seed=job.seed, stagger=stagger)


def _meets(r: _Run, job: ServingJob) -> bool:
    ok_t = job.slo_ttft is None or _percentile(r.ttft, 0.9) <= job.slo_ttft
    ok_i = job.slo_itl is None or _weighted_percentile(r.itl, 0.9) <= job.slo_itl
    return ok_t and ok_i


def _replicas_for_rate(job: ServingJob, sm: StepModel, cap: int, chunk: int, capacity: float, dev: Device,
                       t: Terms) -> tuple[int, _Run]:
    """The fewest replicas whose share of the rate meets the SLO (without one: stays under 90% of capacity,
    where queues stay short), and the run at that share."""
    rate = float(job.rate)  # type: ignore[arg-type]
    n = max(1, math.ceil(rate / (0.9 * capacity)))
    if job.slo_ttft is None and job.slo_itl is None:
        t.add("replicas", f"ceil(rate {rate:g} / (0.9 x capacity {capacity:.4g} req/s))", n, "",
              "assumed: a replica runs at most 90% busy (queueing delay grows without bound near 100%)")
    while True:
        if n * job.devices > MAX_FLEET_DEVICES:
            raise PlanError(f"{rate:g} requests/s needs more than {MAX_FLEET_DEVICES:,} x {dev.id} "
                            f"({capacity:.3g} req/s per {job.devices}-device replica at best); no fleet in the "
                            "catalog's range meets it: shorten the requests, use a narrower precision or faster hardware")
        r = _run(job, sm, cap, chunk, job.requests, rate=rate / n)
        if _meets(r, job) and (job.slo_ttft is not None or job.slo_itl is not None or r.elapsed > 0):
            break
        n = max(n + 1, math.ceil(n * 1.1))
    if job.slo_ttft is not None or job.slo_itl is not None:
        t.add("replicas", f"fewest replicas with p90 TTFT <= {job.slo_ttft} s and p90 ITL <= {job.slo_itl} s at "
              f"rate {rate:g} / replicas", n, "", "simulated continuous batching (this module)")
    return n, r


def estimate_serving(job: ServingJob) -> ServingEstimate:
    """Throughput and latency percentiles of continuous batching under ``job``'s load; see the module docstring."""
    m = get_model(job.model)
    dev = resolve_hardware(job.hardware, job.calibration)
    engine = get_engine(job.engine, dev) if job.engine else default_engine(dev, serving=True)
    ep = job.ep or 1
    check_ep(m, job.devices, job.devices // ep if job.devices % ep == 0 else 1, ep)
    tp = job.devices // ep
    if m.spec.n_heads % tp and dev.vendor not in PADS_HEADS:
        raise PlanError(f"{tp} devices per attention group do not divide the {m.spec.n_heads} attention heads of "
                        f"{m.name}; choose a divisor of {m.spec.n_heads} for --devices / --ep")
    beyond = _context_check(m, job.prompt_len, job.gen_len, job.allow_beyond_context)
    m, padding = pad_heads(m, tp)
    sm = step_model(job, m, dev, engine)
    cap, limit, kv_tokens, _ = _capacity(job, m, dev, engine)
    chunk = engine.chunk_tokens if engine.chunk_tokens < (1 << 30) else job.prompt_len * cap + cap
    t = Terms()
    t.add("engine", f"{engine.name}: CUDA graphs {'on' if sm.graphs else 'off'}, max running sequences "
          f"{engine.max_batch}, prefill chunk {min(chunk, 1 << 30)} tokens per step", engine.max_batch, "", engine.source)
    kvd = kv_cache_dtype(job.precision, engine, dev, job.calibration, serving=True)
    t.add("kv_elem_bytes", kvd.why, kvd.bytes, "B", kvd.source)
    t.add("kv_capacity_tokens", f"(90% of {dev.memory_bytes:.4g} B - weights - workspace) / {sm.kv_tok:.4g} B per "
          "token", kv_tokens, "tokens", "hwlm.formulas.kv_cache_bytes_per_token (GQA: n_kv_heads, MLA: latent)")
    t.add("batch_limit", f"min(engine cap{f' x {ep} ep groups' if ep > 1 else ''}, kv capacity / "
          f"{job.prompt_len + job.gen_len} tokens per request): {limit}", cap, "sequences",
          MAX_BATCH_PER_DP_RANK if ep > 1 else "")
    for name, curve, what in (("decode_eff_at_batch_limit", sm.decode_curve, "decode_rows"),
                              ("prefill_eff_at_chunk", sm.prefill_curve, "prefill_rows")):
        if curve:  # the measured curve the step model reads, and its value where a full step sits
            at = cap if what == "decode_rows" else min(chunk, job.prompt_len * cap)
            t.add(name, f"calibration {what} " + ", ".join(f"{r}: {e:.3g}" for r, e in curve)
                  + f" (rows: efficiency), log-linear in rows, at {at} rows", 100 * curve_at(curve, at), "%",
                  "hwlm bench infer cells via hwlm bench calibrate")
    if ep > 1:  # what the step model adds per step for the exchange, at a full batch's decode step
        a2a, a2a_f = ep_comm(m, dev, tp, ep, cap / ep, sm.pri.comm_eff)
        t.add("decode_ep_all_to_all_time", f"one decode step of {cap} sequences, {cap / ep:g} per ep group: {a2a_f}",
              a2a, "s", EP_SOURCE + "; " + library_for(dev).source)
    one = _run(job, sm, cap, chunk, 3, concurrency=1)
    single_ttft, single_itl = max(one.ttft or [0.0]), _weighted_percentile(one.itl, 0.5)
    t.add("single_request_ttft", "one request alone: its prompt in chunks + the first token", single_ttft, "s")
    t.add("single_request_itl", "one request alone: a decode step at batch 1", single_itl, "s")
    for name, slo, best in (("--slo-ttft", job.slo_ttft, single_ttft), ("--slo-itl", job.slo_itl, single_itl)):
        if slo is not None and slo < best:
            raise PlanError(f"{name} {slo:g} s is below the {best:.3g} s one request alone takes on {job.devices} x "
                            f"{dev.id} with {engine.id}: no load meets it; raise it, or "
                            + _what_would_work(job, m, dev, engine, name))
    span = single_ttft + (job.gen_len - 1) * single_itl  # one request's duration: the users' start spread
    # saturated: every one of the cap slots is filled at least once, whatever the requests simulated
    sat = _run(job, sm, cap, chunk, max(job.requests // 2, cap), concurrency=cap, stagger=span)
    capacity = t.add("capacity", f"requests / time with {cap} always running (saturated)",
                     sat.done / sat.elapsed, "requests/s", "simulated continuous batching (this module)")
    if job.rate is not None:
        replicas, r = _replicas_for_rate(job, sm, cap, chunk, capacity, dev, t)
        rps = float(job.rate)
    else:
        replicas, r = 1, _run(job, sm, cap, chunk, job.requests, concurrency=job.concurrency, stagger=span)
        rps = r.done / r.elapsed
    out_tps = t.add("output_tokens_per_s", f"requests/s {rps:.4g} x gen {job.gen_len}", rps * job.gen_len, "tokens/s")
    cpm = None
    if (job.price_per_hour or dev.price_per_hour) is not None:
        price = job.price_per_hour or dev.price_per_hour
        cpm = t.add("cost_per_million_tokens", f"{replicas} x {job.devices} x ${price}/h / 3600 / output tokens/s x 1e6",
                    replicas * job.devices * price / 3600 / out_tps * 1e6, "USD")  # type: ignore[operator]
    ept = None
    power = job.power_w if job.power_w is not None else (
        None if dev.tdp_w is None else sm.pri.power_fraction * dev.tdp_w)
    if power is not None:
        ept = t.add("energy_per_token", f"{replicas} x {job.devices} x {power:g} W x PUE {job.pue} / output tokens/s",
                    replicas * job.devices * power * job.pue / out_tps, "J",
                    f"{'user power' if job.power_w is not None else dev.source('tdp_w')}; {PUE_SOURCE}")
        t.add("co2_per_million_tokens", f"energy_per_token x 1e6 / 3.6e6 x {job.grid_intensity} kg/kWh",
              ept * 1e6 / 3.6e6 * job.grid_intensity, "kg", GRID_SOURCE)
    notes = [f"engine: {engine.id}" + ("" if job.engine else " (assumed; pass --engine)"),
             f"running sequences limited by {limit}"]
    if ept is None:
        notes.append(f"{dev.id} has no published TDP; pass --power-w for energy")
    if beyond:
        notes.append(beyond)
    if padding:
        notes.append(padding)
    if job.concurrency is not None and not _meets(r, job):
        notes.append("the SLO is not met at this concurrency; give --rate to size the fleet for it")
    if job.concurrency is not None and job.concurrency > cap:
        notes.append(f"{job.concurrency - cap} of {job.concurrency} requests wait in the queue at any time "
                     f"(the batch is capped at {cap} by {limit}): TTFT includes that wait")
    return ServingEstimate(
        model=m.name, hardware=dev.id, devices=job.devices, ep=job.ep or 1, engine=engine.id, precision=job.precision,
        prompt_len=job.prompt_len, gen_len=job.gen_len, concurrency=job.concurrency, rate=job.rate, replicas=replicas,
        requests_per_s=rps, output_tokens_per_s=out_tps, mean_batch=r.batch_sum, batch_limit=cap, limited_by=limit,
        kv_capacity_tokens=kv_tokens, ttft_p50_s=_percentile(r.ttft, 0.5), ttft_p90_s=_percentile(r.ttft, 0.9),
        ttft_p99_s=_percentile(r.ttft, 0.99), itl_p50_s=_weighted_percentile(r.itl, 0.5),
        itl_p90_s=_weighted_percentile(r.itl, 0.9), itl_p99_s=_weighted_percentile(r.itl, 0.99),
        capacity_requests_per_s=capacity, single_ttft_s=single_ttft, single_itl_s=single_itl,
        cost_per_million_tokens_usd=cpm, energy_per_token_j=ept, terms=list(t), notes=notes)
