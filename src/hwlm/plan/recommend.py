"""Hardware recommendation: sweep catalog devices x device counts x layouts, filter, rank, Pareto front.

Training sweeps 1, 2, 4, ... devices (and whole nodes beyond one node); serving sweeps tensor
parallel degrees inside one node and, for a mixture-of-experts model no node holds, replicas of 2, 4, 8, ...
nodes with expert parallelism over all their devices (a dense model that needs more than a node is dropped
as not modelled: ``plan serve`` has no pipeline parallelism across nodes). Options that do not fit, miss the
deadline or exceed the budget are dropped (and counted); the rest are ranked by the objective, and the
options no other option beats on all of time, cost and energy form the Pareto front.

A training run's global batch is the compute-optimal one of DeepSeek-AI 2024 (arXiv:2401.02954,
section 3.1, eq. 1: B_opt = 0.292 x C^0.3271 tokens for a budget of C = 6 N D FLOPs; 1.7M tokens for
an 8B model on 10B tokens, 67M for 405B on 15T): no run would use a larger one, so it caps the
data-parallel width, and more devices must come from tensor or pipeline parallelism (or be dropped as
"beyond the critical batch"). By default the best option of each hardware family (vendor and kind) is
shown; ``top`` lists that many of the overall best instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hwlm.errors import HwlmError, PlanError
from hwlm.formulas import train_flops_per_token
from hwlm.plan.catalog import Device, list_devices
from hwlm.plan.inference import estimate_inference
from hwlm.plan.models import Model, get_model
from hwlm.plan.training import estimate_training

__all__ = ["Option", "Recommendation", "recommend", "OBJECTIVES", "critical_batch_tokens", "family"]

OBJECTIVES = ("time", "cost", "energy")


@dataclass(frozen=True)
class Option:
    """One (hardware, device count, layout) choice and its predicted time, cost and energy."""

    hardware: str
    devices: int
    layout: str
    time_s: float
    cost_usd: float | None
    energy_kwh: float | None
    detail: dict[str, Any] = field(default_factory=dict, compare=False)

    def key(self, objective: str) -> float:
        v = {"time": self.time_s, "cost": self.cost_usd, "energy": self.energy_kwh}[objective]
        return float("inf") if v is None else v

    def to_dict(self) -> dict[str, Any]:
        return {"hardware": self.hardware, "devices": self.devices, "layout": self.layout, "time_s": self.time_s,
                "cost_usd": self.cost_usd, "energy_kwh": self.energy_kwh, **self.detail}


@dataclass
class Recommendation:
    """Ranked options (best first), the Pareto front and why the others were dropped."""

    model: str
    workload: str
    objective: str
    options: list[Option]
    pareto: list[Option]
    dropped: dict[str, int]

    @property
    def best(self) -> Option | None:
        return self.options[0] if self.options else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hwlm-plan-recommend", "model": self.model, "workload": self.workload,
                "objective": self.objective, "best": self.best.to_dict() if self.best else None,
                "options": [o.to_dict() for o in self.options], "pareto": [o.to_dict() for o in self.pareto],
                "dropped": self.dropped}


CRITICAL_BATCH_SOURCE = "DeepSeek-AI 2024, arXiv:2401.02954, section 3.1, eq. 1: B_opt = 0.292 C^0.3271 tokens"


def critical_batch_tokens(params: float, tokens: float) -> float:
    """The largest useful global batch in tokens for a run of ``tokens`` on a ``params`` model.

    >>> round(critical_batch_tokens(8e9, 1e10) / 1e6, 2)
    1.7
    """
    return 0.292 * (6.0 * params * tokens) ** 0.3271


def family(dev: Device) -> str:
    """A hardware family: the vendor and kind (``nvidia gpu``, ``google tpu``, ``aws accelerator``)."""
    return f"{dev.vendor} {dev.kind}"


def _counts(dev: Device, max_devices: int) -> list[int]:
    out = {2 ** i for i in range(20) if 2 ** i <= min(max_devices, dev.devices_per_node)}
    n = dev.devices_per_node
    while n <= max_devices:
        out.add(n)
        n *= 2
    return sorted(out)


def _train_options(m: Model, tokens: float, devs: list[Device], max_devices: int, precision: str,
                   dropped: dict[str, int], kw: dict[str, Any], deadline_s: float | None = None) -> list[Option]:
    out = []
    seq = int(kw.get("seq_len") or m.seq_len)
    flops = tokens * train_flops_per_token(m.spec, seq)
    if "global_batch" not in kw:  # the compute-optimal batch, at least one sequence
        kw = {**kw, "global_batch": max(1, round(critical_batch_tokens(m.params.active, tokens) / seq))}
    for dev in devs:
        if precision not in dev.flops:
            dropped["no " + precision] = dropped.get("no " + precision, 0) + 1
            continue
        for n in _counts(dev, max_devices):
            # Lower bound: even fully sharded, 16 B/param must fit; skip the estimate when it cannot.
            if 16.0 * m.params.total / n > dev.memory_bytes:
                dropped["does not fit"] = dropped.get("does not fit", 0) + 1
                continue
            # Lower bound: even at the full peak the FLOPs take flops / (n x peak); skip what cannot make it.
            if deadline_s is not None and flops / (n * dev.peak_flops(precision)) > deadline_s:
                dropped["misses deadline"] = dropped.get("misses deadline", 0) + 1
                continue
            try:
                e = estimate_training(m, tokens, dev, n, precision=precision, find_smallest=False, **kw)
            except HwlmError as exc:
                why = "beyond the critical batch" if "global batch" in str(exc) else \
                    "no network figure across nodes" if "no network figure" in str(exc) else "no valid layout"
                dropped[why] = dropped.get(why, 0) + 1
                continue
            if not e.fits:
                dropped["does not fit"] = dropped.get("does not fit", 0) + 1
                continue
            out.append(Option(dev.id, n, e.layout.describe(), e.time_s, e.cost_usd, e.energy_kwh,
                              {"mfu": e.mfu, "device_hours": e.device_hours, "family": family(dev),
                               "global_batch_tokens": e.global_batch * e.seq_len,
                               "memory_per_device_bytes": e.memory.total}))
    return out


def _infer_options(m: Model, work: dict[str, int], devs: list[Device], precision: str,
                   dropped: dict[str, int], kw: dict[str, Any]) -> list[Option]:
    out = []
    total = work["tokens"]
    for dev in devs:
        for tp in (1, 2, 4, 8):
            if tp > dev.devices_per_node or m.spec.n_heads % tp:
                continue
            try:
                # Serving engines (vLLM, TensorRT-LLM) replay decode steps as CUDA graphs.
                e = estimate_inference(m, dev, tp, batch=work["batch"], prompt_len=work["prompt_len"],
                                       gen_len=work["gen_len"], precision=precision, graphs=True, **kw)
            except HwlmError:
                dropped["unsupported"] = dropped.get("unsupported", 0) + 1
                continue
            if not e.fits:
                dropped["does not fit"] = dropped.get("does not fit", 0) + 1
                continue
            time = total / e.throughput_tokens_per_s
            cost = None if e.cost_per_million_tokens_usd is None else e.cost_per_million_tokens_usd * total / 1e6
            energy = None if e.energy_per_token_j is None else e.energy_per_token_j * total / 3.6e6
            out.append(Option(dev.id, tp, f"tp={tp}", time, cost, energy,
                              {"ttft_s": e.ttft_s, "tpot_s": e.tpot_s, "family": family(dev),
                               "throughput_tokens_per_s": e.throughput_tokens_per_s}))
            break  # the smallest tp that fits; larger tp is a latency choice, swept below
    return out


def _serve_options(m: Model, work: dict[str, Any], devs: list[Device], precision: str,
                   dropped: dict[str, int]) -> list[Option]:
    """A fleet per device: for each tensor-parallel size inside a node, the replicas that carry the rate
    within the SLOs (``plan serve``'s simulation); where no node holds the model, replicas over several
    nodes (:func:`_multi_node`); the cheapest fleet per device is kept. Time is one request's p90 latency;
    cost and energy are per hour of the fleet."""
    out = []
    for dev in devs:
        if dev.kind not in ("gpu", "tpu", "accelerator") or precision not in (*dev.flops, "w8a16", "w4a16"):
            _count(dropped, "not a serving accelerator or no " + precision)
            continue
        best: Option | None = None
        tried: dict[str, int] = {}  # this device's reasons, merged into ``dropped`` below
        why = None
        for tp in (1, 2, 4, 8):
            if tp > dev.devices_per_node:
                break
            # One replica of tp devices is the least a fleet of them costs (and holds): one that cannot beat the
            # cheapest fleet found, by (cost, devices), is not simulated.
            floor = float("inf") if dev.price_per_hour is None else tp * dev.price_per_hour
            if best is not None and (floor, tp) >= (best.key("cost"), best.devices):
                _count(tried, "not simulated: one replica costs as much as a cheaper fleet")
                continue
            o, why = _fleet(m, work, dev, precision, tp, 1)
            if o is None:
                _count(tried, why)
            elif best is None or (o.key("cost"), o.devices) < (best.key("cost"), best.devices):
                best = o
        if best is None and why == "does not fit":  # not even the largest tp inside a node holds it
            if m.is_moe:
                best = _multi_node(m, work, dev, precision, tried)
            else:
                tried.pop("does not fit")
                _count(tried, "needs more than one node: not modelled (dense models: tensor parallel inside a node)")
        for k, v in tried.items():
            _count(dropped, k, v)
        if best is not None:
            out.append(best)
    return out


def _count(counts: dict[str, int], why: str, n: int = 1) -> None:
    counts[why] = counts.get(why, 0) + n


def _fleet(m: Model, work: dict[str, Any], dev: Device, precision: str, tp: int, ep: int) -> tuple[Option | None, str]:
    """The fleet of ``tp x ep``-device replicas that carries the rate (``plan serve --devices tp*ep --ep ep``),
    or None and why not."""
    from hwlm.plan.jobs import ServingJob
    from hwlm.plan.serving import estimate_serving

    size = tp * ep
    try:
        e = estimate_serving(ServingJob(model=m, hardware=dev, devices=size, ep=ep if ep > 1 else None,
                                        rate=work["rate"], prompt_len=work["prompt_len"], gen_len=work["gen_len"],
                                        precision=precision, slo_ttft=work.get("slo_ttft"),
                                        slo_itl=work.get("slo_itl")))
    except HwlmError as exc:
        return None, ("SLO below one request's latency" if "alone takes" in str(exc) else
                      "rate beyond any fleet" if "needs more than" in str(exc) else
                      "does not fit" if "does not fit" in str(exc) else "unsupported")
    n = e.replicas * size
    if ep == 1:
        layout = f"{e.replicas} x tp={tp} ({e.engine})"
    else:
        over = (f"{size // dev.devices_per_node} nodes, inter-node network {dev.inter_node_bw / 1e9:g} GB/s per device"
                if size > dev.scale_up_devices else f"{size // dev.devices_per_node} hosts of one scale-up domain")
        layout = f"{e.replicas} x ep={ep} tp={tp} over {over}, attention data-parallel ({e.engine})"
    price, power = dev.price_per_hour, dev.tdp_w
    return Option(dev.id, n, layout, e.ttft_p90_s + (work["gen_len"] - 1) * e.itl_p90_s,
                  None if price is None else n * price, None if power is None else n * power / 1000,
                  {"family": family(dev), "replicas": e.replicas, "tp": tp, "ttft_p90_s": e.ttft_p90_s,
                   "itl_p90_s": e.itl_p90_s, "output_tokens_per_s": e.output_tokens_per_s,
                   **({"ep": ep, "nodes_per_replica": size // dev.devices_per_node} if ep > 1 else {})}), ""


# The largest replica tried across nodes: DeepSeek-V3's decoding deployment runs 320 GPUs in one expert-parallel
# group (arXiv:2412.19437, section 3.4.2: EP320 with data-parallel attention, 40 nodes).
MAX_REPLICA_DEVICES = 512


def _multi_node(m: Model, work: dict[str, Any], dev: Device, precision: str,
                tried: dict[str, int]) -> Option | None:
    """Replicas over more than one node for a mixture-of-experts model no node holds: the routed experts spread
    over ep = the replica's devices, attention data-parallel over them (tp=1; vLLM ``--data-parallel-size N
    --enable-expert-parallel``, SGLang ``--enable-dp-attention``; DeepSeek-V3's deployment, arXiv:2412.19437,
    section 3.4). ep > one scale-up domain, so ``plan serve`` prices the (ep - r)/ep of each all-to-all that leaves
    a node of r devices on the catalog's inter-node network (:func:`hwlm.plan.collectives.all_to_all_bytes_time`).
    Tries 2, 4, 8, ... nodes: the first that fits, then doubles while the fleet gets cheaper."""
    if dev.inter_node_bw is None and 2 * dev.devices_per_node > dev.scale_up_devices:
        _count(tried, "no network figure across nodes")
        return None
    best: Option | None = None
    size = 2 * dev.devices_per_node
    if m.spec.n_experts % size:
        _count(tried, "experts do not divide over whole nodes")
        return None
    while size <= min(m.spec.n_experts, MAX_REPLICA_DEVICES) and m.spec.n_experts % size == 0:
        if size > dev.scale_up_devices and dev.inter_node_bw is None:
            break
        o, why = _fleet(m, work, dev, precision, 1, size)
        if o is None and why != "does not fit":
            _count(tried, why)
            break
        if o is not None:
            if best is not None and o.key("cost") >= best.key("cost"):
                break  # a larger replica no longer lowers the fleet's cost
            best = o
        size *= 2
    if best is None:
        _count(tried, "does not fit across nodes either")
    return best


def _pareto(options: list[Option]) -> list[Option]:
    vecs = [(o.time_s, o.key("cost"), o.key("energy")) for o in options]
    front = [o for o, v in zip(options, vecs)
             if not any(p[0] <= v[0] and p[1] <= v[1] and p[2] <= v[2] and p != v for p in vecs)]
    return sorted(front, key=lambda o: o.time_s)


def recommend(model: str | Model, *, tokens: float | None = None, inference: dict[str, int] | None = None,
              serving: dict[str, Any] | None = None,
              deadline_s: float | None = None, budget_usd: float | None = None, objective: str = "time",
              precision: str = "bf16", kind: str | None = None, hardware: list[str] | None = None,
              max_devices: int = 16384, top: int | None = None, **kw: Any) -> Recommendation:
    """Rank hardware for training on ``tokens`` tokens, for ``inference`` = {batch, prompt_len, gen_len, tokens},
    or for ``serving`` = {rate, prompt_len, gen_len, slo_ttft, slo_itl} (a request rate: the fleet that carries it).

    ``top=None``: the best option of each hardware family; ``top=N``: the N best overall."""
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if sum(x is not None for x in (tokens, inference, serving)) != 1:
        raise PlanError("give either --tokens (training), --rate (serving a request rate) or an inference "
                        "workload (--batch/--prompt-len/--gen-len)")
    m = get_model(model)
    devs = list_devices(kind) if hardware is None else [d for d in list_devices() if d.id in set(hardware)]
    dropped: dict[str, int] = {}
    if tokens is not None:
        opts = _train_options(m, tokens, devs, max_devices, precision, dropped, kw, deadline_s)
        workload = f"train on {tokens:.3g} tokens"
    elif serving is not None:
        work = {"prompt_len": 512, "gen_len": 256, **{k: v for k, v in serving.items() if v is not None}}
        opts = _serve_options(m, work, devs, precision, dropped)
        workload = (f"serve {work['rate']:g} requests/s, prompt {work['prompt_len']}, gen {work['gen_len']}"
                    + (f", p90 TTFT <= {work['slo_ttft']:g} s" if work.get("slo_ttft") else "")
                    + (f", p90 ITL <= {work['slo_itl']:g} s" if work.get("slo_itl") else "")
                    + "; time = one request's p90 latency, cost and energy per hour of the fleet")
        if not opts:
            raise PlanError(f"no hardware in the catalog serves {work['rate']:g} requests/s of {m.name} within the "
                            f"SLOs ({', '.join(f'{k} {v}' for k, v in dropped.items()) or 'none tried'}); "
                            "relax --slo-ttft/--slo-itl, shorten the requests or use a narrower --precision")
    else:
        assert inference is not None
        work = {"batch": 1, "prompt_len": 512, "gen_len": 256, "tokens": 1_000_000, **inference}
        opts = _infer_options(m, work, devs, precision, dropped, kw)
        workload = (f"serve {work['tokens']:.3g} output tokens, batch {work['batch']}, "
                    f"prompt {work['prompt_len']}, gen {work['gen_len']}")
    kept = []
    for o in opts:
        if deadline_s is not None and o.time_s > deadline_s:
            dropped["misses deadline"] = dropped.get("misses deadline", 0) + 1
        elif budget_usd is not None and (o.cost_usd is None or o.cost_usd > budget_usd):
            dropped["over budget or no price"] = dropped.get("over budget or no price", 0) + 1
        else:
            kept.append(o)
    # Ties (no price or no TDP: an unknown objective) go to the fewest device-hours, then the fastest.
    kept.sort(key=lambda o: (o.key(objective), o.time_s * o.devices, o.time_s))
    if top is None:
        shown, seen = [], set()
        for o in kept:
            if o.detail["family"] not in seen:
                seen.add(o.detail["family"])
                shown.append(o)
    else:
        if top < 1:
            raise PlanError(f"--top must be a whole number >= 1, got {top}")
        shown = kept[:top]
    if tokens is not None and kept:
        workload += (f", global batch {kept[0].detail['global_batch_tokens'] / 1e6:.3g}M tokens "
                     f"({CRITICAL_BATCH_SOURCE})" if "global_batch" not in kw else "")
    return Recommendation(model=m.name, workload=workload, objective=objective, options=shown,
                          pareto=_pareto(kept), dropped=dropped)
