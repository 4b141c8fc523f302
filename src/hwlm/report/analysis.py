"""What the report computes from its inputs: roofline placement, throughput and energy rows.

Roofline (Williams, Waterman and Patterson 2009, "Roofline: an insightful visual performance
model", CACM 52(4)): attainable FLOP/s = min(peak FLOP/s, bandwidth x arithmetic intensity),
with both roofs *measured* by ``hwlm bench peak`` (square matmul per data type, one large
device copy). Each measured workload sits at (its FLOPs / its bytes moved, its achieved FLOP/s).
FLOPs come from :mod:`hwlm.formulas` (PaLM convention); bytes are a traffic model, stated
here because it is an estimate, not a counter reading:

* training step: parameter traffic of 12 B/param per micro-batch (fp32 weights read in the
  forward and again in the backward, gradient written) plus 28 B/param for AdamW (reads
  weight, gradient, m, v; writes weight, m, v); the activations autograd saves in the forward
  (:func:`hwlm.formulas.saved_activation_bytes_per_layer`, counted from the model) written and
  read back in the backward; fp32 logits written, read by the softmax and their gradient
  written (3 x b s V x 4 B);
* prefill: every weight read once plus the KV cache written for the prompt;
* decode step: every weight read once plus the whole KV cache read (as ``hwlm bench infer``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from hwlm.errors import HwlmError
from hwlm.formulas import DTYPE_BYTES, ArchSpec, forward_flops_per_token, kv_cache_bytes_per_token, param_count, \
    saved_activation_bytes_per_layer, train_flops_per_token
from hwlm.report.collect import BenchRecord, ReportInputs, RunData

__all__ = ["Roof", "WorkPoint", "EnergyRow", "roof_from_peak", "train_step_bytes", "workload_points",
           "energy_rows", "energy_kind", "method_text", "run_summary", "same_device", "ADAM_BYTES_PER_PARAM"]

ADAM_BYTES_PER_PARAM = 28.0       # AdamW: read p, g, m, v and write p, m, v, all fp32
MICRO_BYTES_PER_PARAM = 12.0      # per micro-batch: read w (forward), read w (backward), write grad
_DTYPE_ORDER = ("fp32", "tf32", "bf16", "fp16", "int8")
_METHODS = {"measured-rapl": "measured (RAPL counters)", "measured-nvml": "measured (NVML counter)",
            "estimate-tdp": "estimate (TDP x utilization)", "planner": "estimate (planner: TDP x load x PUE)"}


@dataclass
class Roof:
    """The measured roofs of one device, from a ``peak`` record."""

    device: str
    flops: dict[str, float]          # data type -> measured matmul FLOP/s
    bytes_per_s: float | None        # measured device (DRAM/HBM) copy bandwidth
    source: str
    cache_bytes_per_s: float | None = None  # measured copy bandwidth of a buffer that fits in cache

    def attainable(self, p: "WorkPoint") -> tuple[float | None, str]:
        """(the roof over ``p``, which roof): min(matmul peak of its precision, bandwidth x intensity),
        with the DRAM bandwidth, or the cache bandwidth when ``p`` runs faster than DRAM allows (its
        operands stay in cache: a small model's weights in decode). (None, reason) when no measured roof
        bounds it: never more than 100% of a roof."""
        peak = self.flops.get(p.precision) or (max(self.flops.values()) if self.flops else None)
        for bw, name in ((self.bytes_per_s, "DRAM"), (self.cache_bytes_per_s, "cache")):
            if bw is None:
                continue
            roof = min(peak, bw * p.intensity) if peak else bw * p.intensity
            if p.flops_per_s <= roof:
                return roof, name if roof < (peak or float("inf")) else "compute"
        if not self.bytes_per_s and peak and p.flops_per_s <= peak:
            return peak, "compute"
        return None, ("above the DRAM roof: cache-resident (no cache roof measured)" if not self.cache_bytes_per_s
                      else "above every measured roof (the traffic model counts more bytes than moved)")


@dataclass
class WorkPoint:
    """One measured workload on the roofline: FLOPs and bytes of one unit of work and its time."""

    label: str
    phase: str                       # train | prefill | decode
    flops: float
    bytes: float
    seconds: float
    device: str
    precision: str
    source: str

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds


@dataclass
class EnergyRow:
    """Energy per token of one measured (or planned) workload, with where the figure comes from."""

    label: str
    per: str                          # what a token is here: "training token", "generated token"
    joules_per_token: float | None
    method: str                       # the record's method: measured-rapl, measured-nvml, estimate-tdp, ...
    watts: float | None
    detail: str
    source: str

    @property
    def kind(self) -> str:
        return energy_kind(self.method)


def energy_kind(method: str) -> str:
    """``measured``, ``estimate`` or ``none`` for a bench energy method.

    >>> energy_kind("measured-nvml"), energy_kind("estimate-tdp"), energy_kind("none")
    ('measured', 'estimate', 'none')
    """
    m = (method or "none").lower()
    if m.startswith("measured"):
        return "measured"
    if m.startswith("estimate") or m == "planner":
        return "estimate"
    return "none"


def method_text(method: str) -> str:
    """A person's label for an energy method, always saying measured or estimate.

    >>> method_text("measured-nvml"), method_text("none")
    ('measured (NVML counter)', 'not measured')
    """
    return _METHODS.get(method, "not measured" if method in ("none", "") else method)


def same_device(a: str, b: str) -> bool:
    """``cuda`` and ``cuda:0`` are the same device.

    >>> same_device("cuda", "cuda:0"), same_device("cpu", "cuda")
    (True, False)
    """
    def norm(d: str) -> str:
        d = d.strip().lower()
        return d if ":" in d or d in ("cpu", "unknown") else f"{d}:0"
    return norm(a) == norm(b)


def roof_from_peak(rec: BenchRecord) -> Roof | None:
    """The measured matmul peaks and copy bandwidth of a peak record (None when it has neither)."""
    s = rec.summary
    flops = {d: float(s[f"matmul_{d}_flops"]) for d in _DTYPE_ORDER if isinstance(s.get(f"matmul_{d}_flops"),
                                                                                  (int, float))}
    bw, cache = s.get("membw_bytes_per_s"), s.get("cachebw_bytes_per_s")
    if not flops and not bw:
        return None
    return Roof(device=rec.device, flops=flops, bytes_per_s=float(bw) if bw else None,
                source=f"{rec.path.name} ({rec.created or 'undated'})", cache_bytes_per_s=float(cache) if cache else None)


def _arch(model: str, **overrides: Any) -> ArchSpec:
    """A model preset (``hwlm.model`` names) as an ArchSpec; HwlmError for an unknown name."""
    from hwlm.model.config import ModelConfig
    return ModelConfig.from_name(model, **{k: v for k, v in overrides.items() if v}).to_arch()


def _arch_from_dict(model: dict[str, Any]) -> ArchSpec:
    from hwlm.config import from_dict
    from hwlm.model.config import ModelConfig
    return from_dict(ModelConfig, model, "run config.json [model]").to_arch()


def train_step_bytes(arch: ArchSpec, batch: int, seq: int, precision: str, grad_accum: int = 1) -> float:
    """Estimated bytes one optimizer step moves (see the module docstring for the model).

    >>> spec = ArchSpec(vocab_size=512, d_model=16, n_layers=2, n_heads=2, max_positions=32)
    >>> round(train_step_bytes(spec, batch=4, seq=32, precision="fp32"))
    1934848
    """
    params = param_count(arch).total
    act = arch.n_layers * saved_activation_bytes_per_layer(arch, batch * seq, seq, precision)  # saved per micro-batch
    logits = 3 * batch * seq * arch.vocab_size * 4
    per_micro = MICRO_BYTES_PER_PARAM * params + 2 * act + logits
    return grad_accum * per_micro + ADAM_BYTES_PER_PARAM * params


def _bench_train_point(rec: BenchRecord) -> WorkPoint:
    c, s = rec.config, rec.summary
    arch = _arch(str(c["model"]), block_size=c.get("seq"), vocab_size=c.get("vocab_size"))
    batch, seq = int(c["batch"]), int(c["seq"])
    flops = batch * seq * train_flops_per_token(arch, seq)
    return WorkPoint(label=f"train step {c['model']} b{batch}x{seq}", phase="train", flops=flops,
                     bytes=train_step_bytes(arch, batch, seq, str(c.get("precision", "fp32"))),
                     seconds=float(s["step_s_p50"]), device=rec.device, precision=str(c.get("precision", "fp32")),
                     source=rec.path.name)


def _infer_points(rec: BenchRecord) -> list[WorkPoint]:
    c = rec.config
    precision = str(c.get("precision", "fp32"))  # a compressed run's weight format (bench infer --run)
    width = DTYPE_BYTES.get(str(c.get("kv_dtype", precision)), 4.0)
    arch = (_arch_from_dict(c["model_config"]) if isinstance(c.get("model_config"), dict)
            else _arch(str(c["model"]), block_size=c.get("block_size"), vocab_size=c.get("vocab_size")))
    weights = float(rec.summary.get("weight_bytes") or param_count(arch).total * width)
    kv_tok = kv_cache_bytes_per_token(arch, width)
    out = []
    for smp in rec.record.get("samples") or []:
        cs = smp.get("summary") or {}
        if smp.get("name") != "infer_cell" or "ttft_ms" not in cs:
            continue
        b, p, new = int(smp["batch"]), int(smp["prompt_len"]), int(smp.get("new_tokens", 0))
        common = dict(device=rec.device, precision=precision, source=rec.path.name)
        out.append(WorkPoint(label=f"prefill {c['model']} b{b} p{p}", phase="prefill",
                             flops=b * p * forward_flops_per_token(arch, p), bytes=weights + b * p * kv_tok,
                             seconds=float(cs["ttft_ms"]) / 1e3, **common))
        if "tpot_ms_p50" in cs:
            ctx = p + new // 2   # the middle of the generation, as hwlm bench infer counts bytes
            out.append(WorkPoint(label=f"decode {c['model']} b{b} ctx{ctx}", phase="decode",
                                 flops=b * forward_flops_per_token(arch, ctx), bytes=weights + b * ctx * kv_tok,
                                 seconds=float(cs["tpot_ms_p50"]) / 1e3, **common))
    return out


def _run_point(run: RunData) -> WorkPoint | None:
    tps = [r["tokens_per_s"] for r in run.log if isinstance(r.get("tokens_per_s"), (int, float))
           and r["tokens_per_s"] > 0]
    if not run.model or not tps:
        return None
    arch = _arch_from_dict(run.model)
    train = (run.config or {}).get("train") or {}
    batch, accum = int(train.get("batch_size", 1)), int(train.get("grad_accum", 1))
    seq = int(run.model.get("block_size", arch.max_positions))
    world = int(run.runtime.get("world_size", 1))
    tokens_per_step = batch * accum * seq * world
    precision = str(run.runtime.get("precision", "fp32"))
    # a multi-process run moves its bytes on every rank: place one rank's share of the work
    flops = tokens_per_step * train_flops_per_token(arch, seq) / world
    return WorkPoint(label=f"train run {run.name}", phase="train", flops=flops,
                     bytes=train_step_bytes(arch, batch, seq, precision, accum),
                     seconds=tokens_per_step / statistics.median(tps), device=str(run.runtime.get("device", "unknown")),
                     precision=precision, source=f"{run.name}/log.jsonl (median tokens/s)")


def workload_points(inputs: ReportInputs) -> tuple[list[WorkPoint], list[str]]:
    """Every measured workload that can be placed, and a note for each one that cannot."""
    points: list[WorkPoint] = []
    notes: list[str] = []
    for rec in inputs.bench("train") + inputs.bench("infer"):
        try:
            if rec.benchmark == "train":
                if "step_s_p50" in rec.summary:
                    points.append(_bench_train_point(rec))
            else:
                points.extend(_infer_points(rec))
        except (HwlmError, KeyError, TypeError, ValueError) as exc:
            notes.append(f"{rec.path.name}: not placed on the roofline ({type(exc).__name__}: {exc})")
    for run in inputs.runs:
        try:
            p = _run_point(run)
        except (HwlmError, KeyError, TypeError, ValueError) as exc:
            notes.append(f"run {run.name}: not placed on the roofline ({exc})")
            continue
        if p is not None:
            points.append(p)
    return points, notes


def energy_rows(inputs: ReportInputs) -> list[EnergyRow]:
    """Energy per token from train and infer records, labelled with each record's method."""
    rows: list[EnergyRow] = []
    for rec in inputs.bench("train"):
        s, c = rec.summary, rec.config
        detail = _energy_detail(rec)
        rows.append(EnergyRow(label=f"train {c.get('model')} b{c.get('batch')}x{c.get('seq')} {c.get('precision')} "
                                    f"on {rec.device}", per="training token", joules_per_token=s.get("joules_per_token"),
                              method=str(s.get("energy_method", "none")), watts=s.get("avg_watts"), detail=detail,
                              source=rec.path.name))
    for rec in inputs.bench("infer"):
        s, c = rec.summary, rec.config
        rows.append(EnergyRow(label=f"infer {c.get('model')} {c.get('precision')} on {rec.device}",
                              per="generated token", joules_per_token=s.get("joules_per_generated_token"),
                              method=str(s.get("energy_method", "none")), watts=s.get("avg_watts"),
                              detail=str(s.get("energy_covers", "")) or _energy_detail(rec), source=rec.path.name))
    return rows


def _energy_detail(rec: BenchRecord) -> str:
    """The meter's own explanation (TDP origin, counters used), or the finding saying why there is none."""
    for smp in rec.record.get("samples") or []:
        e = smp.get("energy")
        if isinstance(e, dict) and e.get("detail"):
            return str(e["detail"])
    found = [f for f in rec.record.get("findings") or [] if "energy" in f]
    return found[0] if found else ""


def run_summary(run: RunData) -> dict[str, Any]:
    """Last losses, median throughput and MFU of a run, for the tables."""
    def last(key: str) -> float | None:
        vals = run.series(key)[2]
        return vals[-1] if vals else None

    def median(key: str) -> float | None:
        vals = run.series(key)[2]
        return statistics.median(vals) if vals else None
    m = run.model or {}
    shape = f"{m.get('flavour', '?')} {m.get('n_layer', '?')}x{m.get('n_embd', '?')}" if m else "unknown"
    return {"run": run.name, "model": f"{((run.config or {}).get('train') or {}).get('model', '?')} ({shape})",
            "device": run.runtime.get("device", "unknown"), "precision": run.runtime.get("precision", "unknown"),
            "steps": run.log[-1].get("step") if run.log else None, "tokens": run.log[-1].get("tokens") if run.log else None,
            "loss": last("loss"), "val_loss": last("val_loss"), "tokens_per_s": median("tokens_per_s"),
            "mfu": median("mfu"), "peak_flops": run.runtime.get("peak_flops")}
