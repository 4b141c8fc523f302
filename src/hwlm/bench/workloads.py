"""``hwlm bench train`` and the measuring pieces every workload shares; ``hwlm bench infer`` is
:mod:`hwlm.bench.infer` (its names are importable from here too, as they always were).

train: full training steps (forward, backward, AdamW) of a preset model; reports tokens/s,
step time p50/p90/p99, MFU against the *measured* matmul peak (a peak record's, or
:func:`hwlm.train.runtime.quick_matmul_peak`) and, if given, against a datasheet peak, peak memory,
and energy per token. FLOPs per token come from :mod:`hwlm.formulas` (PaLM convention).

Shared: precision and size checks, peak memory (CUDA's allocator, else the process's peak RSS), the
free-RAM check, a preset model built on random weights, and :func:`format_workload` for either record.

Out of memory (torch's OOM error, or a size whose estimate exceeds free RAM on the CPU)
is a finding in the record, "at what size", never a crash.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from hwlm.bench.energy import EnergyMeter
from hwlm.bench.peak import is_oom
from hwlm.bench.records import load_record, make_record, spread
from hwlm.device import measure_seconds, synchronize, torch_dtype
from hwlm.errors import HardwareError
from hwlm.formulas import mfu, train_flops_per_token, training_memory
from hwlm.hw import memory_bytes

__all__ = ["TrainBenchConfig", "InferBenchConfig", "run_train_bench", "run_infer_bench", "format_workload"]

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

_INFER = ("InferBenchConfig", "run_infer_bench")


def __getattr__(name: str) -> Any:
    # PEP 562: the inference bench lives in hwlm.bench.infer, which imports the shared pieces below, so it
    # is loaded on first use rather than at the top (the two modules would import each other).
    if name in _INFER:
        from hwlm.bench import infer
        return getattr(infer, name)
    raise AttributeError(f"module 'hwlm.bench.workloads' has no attribute {name!r}")


@dataclass
class TrainBenchConfig:
    """What ``hwlm bench train`` runs."""

    model: str = "tiny"
    device: str = "auto"
    batch: int = 8
    seq: int | None = None              # None: the preset's block_size
    steps: int = 10                     # timed steps
    warmup: int = 3                     # untimed steps (compilation happens here)
    precision: str = "fp32"             # fp32 | tf32 (CUDA) | bf16 autocast | fp16 autocast + loss scaling (CUDA)
    compile: bool = False
    peak_record: str | None = None      # a 'peak' bench record whose matmul figure is the MFU reference
    datasheet_peak: float | None = None  # FLOP/s from the datasheet, for a second MFU figure
    energy: str = "auto"
    tdp_w: float | None = None
    seed: int = 0
    vocab_size: int | None = None       # None: the preset's


def check_common(device_kind: str, precision: str, what: str) -> None:
    if precision not in PRECISIONS:
        raise HardwareError(f"unknown precision '{precision}' for {what}; choose one of {', '.join(PRECISIONS)}")
    if precision == "tf32" and device_kind != "cuda":
        raise HardwareError(f"precision tf32 needs a CUDA GPU (device is {device_kind}); use fp32 or bf16")
    if precision == "fp16" and device_kind == "cpu" and what == "train":
        raise HardwareError("precision fp16 training needs a CUDA GPU (loss scaling); use bf16 or fp32 on the CPU")


def check_positive(**values: int) -> None:
    for name, v in values.items():
        if v < 1:
            raise HardwareError(f"--{name.replace('_', '-')} must be at least 1, got {v}")


@contextlib.contextmanager
def _precision(device_kind: str, precision: str):
    """Autocast for bf16/fp16, TF32 matmuls for tf32, true fp32 otherwise."""
    import torch
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        if precision in ("bf16", "fp16"):
            with torch.autocast(device_type=device_kind, dtype=torch_dtype(precision)):
                yield
        else:
            yield
    finally:
        torch.set_float32_matmul_precision(prev)


def reset_peak(kind: str) -> None:
    if kind == "cuda":
        import torch
        torch.cuda.reset_peak_memory_stats()


def peak_memory(kind: str) -> dict[str, Any]:
    if kind == "cuda":
        import torch
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated()),
                "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
                "memory_method": "CUDA caching allocator max_memory_allocated"}
    try:
        import resource
    except ImportError:  # Windows: no getrusage; psutil's peak working set instead
        import psutil
        info = psutil.Process().memory_info()
        return {"peak_memory_bytes": int(getattr(info, "peak_wset", info.rss)),
                "memory_method": "process peak working set (psutil)"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes
    return {"peak_memory_bytes": int(rss), "memory_method": "process peak RSS since start (getrusage)"}


def fits_in_ram(kind: str, need: float) -> str | None:
    """On the CPU, a reason the estimate does not fit in free RAM (else None)."""
    if kind != "cpu":
        return None
    _, avail = memory_bytes()
    if avail is not None and need > 0.9 * avail:
        return f"needs about {need / 2**30:.1f} GiB, only {avail / 2**30:.1f} GiB of RAM free"
    return None


def _mfu_reference(cfg: TrainBenchConfig, device: str) -> tuple[float | None, str]:
    """The measured matmul peak for the run's precision, and where it came from."""
    dtype = cfg.precision  # the MFU reference is the matmul peak of the data type the run computes in
    if cfg.peak_record:
        rec = load_record(cfg.peak_record)
        key = f"matmul_{dtype}_flops"
        if rec["benchmark"] != "peak" or key not in rec["summary"]:
            raise HardwareError(f"{cfg.peak_record} has no '{key}' (a 'peak' record measuring {dtype} is needed); "
                                f"run 'hwlm bench peak --dtypes {dtype}'")
        return float(rec["summary"][key]), f"{key} from {cfg.peak_record}"
    from hwlm.train.runtime import quick_matmul_peak
    try:
        return quick_matmul_peak(device, dtype), f"quick_matmul_peak({device}, {dtype})"
    except (RuntimeError, HardwareError) as exc:
        return None, f"matmul peak could not be measured: {str(exc).splitlines()[0]}"


def _model_config(name: str, seq: int | None = None, vocab_size: int | None = None) -> Any:
    """The preset, its context stretched to ``seq`` if longer, its vocabulary replaced if given."""
    from hwlm.model import ModelConfig
    probe = ModelConfig.from_name(name)
    over: dict[str, int] = {"block_size": max(probe.block_size, seq or 0)}
    if vocab_size:
        over["vocab_size"] = vocab_size
    return ModelConfig.from_name(name, **over)


def build_model(name: str, device: str, seq: int | None, seed: int, vocab_size: int | None) -> tuple[Any, Any]:
    import torch

    from hwlm.model import Transformer
    mcfg = _model_config(name, seq, vocab_size)
    torch.manual_seed(seed)
    return mcfg, Transformer(mcfg).to(device)


def run_train_bench(cfg: TrainBenchConfig) -> dict[str, Any]:
    """Time training steps and return the record (not yet written)."""
    from hwlm.device import select_device
    choice = select_device(cfg.device)
    device, kind = choice.device, choice.type
    check_common(kind, cfg.precision, "train")
    check_positive(batch=cfg.batch, steps=cfg.steps, **({"seq": cfg.seq} if cfg.seq is not None else {}))
    mcfg = _model_config(cfg.model, cfg.seq, cfg.vocab_size)
    seq = cfg.seq or mcfg.block_size
    config = {**asdict(cfg), "device": device, "device_reason": choice.reason, "seq": seq}
    findings: list[str] = []
    summary: dict[str, Any] = {"device": device}
    reference = _mfu_reference(cfg, device)  # first: a bad --peak-record fails before any work
    need = training_memory(mcfg.to_arch(), cfg.batch, seq, cfg.precision, compiled=cfg.compile, device_kind=kind).total
    too_big = fits_in_ram(kind, need)
    if too_big:
        findings.append(f"out of memory (estimated) at model {cfg.model}, batch {cfg.batch}, seq {seq}: {too_big}")
        return make_record("train", config, [], summary, findings)
    try:
        sample = _time_training(cfg, device, kind, seq)
    except (RuntimeError, MemoryError) as exc:
        if not is_oom(exc):
            raise
        free_memory(kind)
        findings.append(f"out of memory at model {cfg.model}, batch {cfg.batch}, seq {seq} ({cfg.precision})")
        return make_record("train", config, [], summary, findings)
    summary.update(_train_summary(cfg, sample, reference, findings))
    return make_record("train", config, [sample], summary, findings)


def _time_training(cfg: TrainBenchConfig, device: str, kind: str, seq: int) -> dict[str, Any]:
    import torch
    mcfg, model = build_model(cfg.model, device, seq, cfg.seed, cfg.vocab_size)
    model.train()
    fused = {"fused": True} if kind in ("cuda", "cpu") else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
    scaler = torch.amp.GradScaler(kind, enabled=cfg.precision == "fp16")
    step_model = torch.compile(model) if cfg.compile else model
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    tokens = torch.randint(0, mcfg.vocab_size, (cfg.batch, seq + 1), generator=gen).to(device)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step() -> None:
        with _precision(kind, cfg.precision):
            _, loss = step_model(x, y, return_logits=False)  # what hwlm train's step calls
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()
    synchronize(device)
    first_step_s = time.perf_counter() - t0  # includes compilation with --compile
    reset_peak(kind)
    meter = EnergyMeter(device, cfg.energy, cfg.tdp_w)
    meter.start()
    secs = measure_seconds(step, device, warmup=max(0, cfg.warmup - 1), repeats=cfg.steps)
    energy = meter.stop()
    return {"name": "train_step", "step_seconds": secs, "first_step_seconds": first_step_s,
            "params": model.num_params(), "tokens_per_step": cfg.batch * seq, "energy": energy.to_dict(),
            "train_flops_per_token": train_flops_per_token(mcfg.to_arch(), seq),
            "energy_covers_warmup_steps": max(0, cfg.warmup - 1), **peak_memory(kind)}


def _train_summary(cfg: TrainBenchConfig, s: dict[str, Any], reference: tuple[float | None, str],
                   findings: list[str]) -> dict[str, Any]:
    st = spread(s["step_seconds"])
    tps = s["tokens_per_step"] / st["median"]
    fpt = s["train_flops_per_token"]
    peak, source = reference
    out: dict[str, Any] = {
        "tokens_per_s": tps, "step_s_p50": st["median"], "step_s_p90": st["p90"], "step_s_p99": st["p99"],
        "step_s_iqr": st["iqr"], "steps": st["count"], "first_step_s": s["first_step_seconds"],
        "params": s["params"], "train_flops_per_token": fpt, "achieved_flops_per_s": tps * fpt,
        "mfu_measured": mfu(tps, fpt, peak), "mfu_reference": source, "peak_flops_measured": peak,
        "mfu_datasheet": mfu(tps, fpt, cfg.datasheet_peak),
        "peak_memory_bytes": s["peak_memory_bytes"], "memory_method": s["memory_method"],
    }
    if not peak:
        findings.append(f"MFU not computed: {source}")
    e = s["energy"]
    if e["joules"]:
        timed_tokens = s["tokens_per_step"] * (st["count"] + s["energy_covers_warmup_steps"])
        out.update({"joules_per_token": e["joules"] / timed_tokens, "avg_watts": e["watts"],
                    "energy_method": e["method"]})
    else:
        findings.append(f"energy not measured: {e['detail']}")
    return out


def free_memory(kind: str) -> None:
    import gc
    gc.collect()
    if kind == "cuda":
        import torch
        torch.cuda.empty_cache()


def format_workload(record: dict[str, Any]) -> str:
    """A readable summary of a train or infer record."""
    c, s = record["config"], record["summary"]
    lines = [f"{record['benchmark']} {c['model']} on {c['device']} ({c['precision']})"]
    if record["benchmark"] == "train" and "tokens_per_s" in s:
        mfu = "n/a" if s["mfu_measured"] is None else f"{100 * s['mfu_measured']:.1f}%"
        ds = "" if s["mfu_datasheet"] is None else f", {100 * s['mfu_datasheet']:.1f}% of datasheet"
        lines += [f"  batch {c['batch']} x seq {c['seq']}, {s['steps']} timed steps, {s['params']:,} parameters",
                  f"  {s['tokens_per_s']:,.0f} tokens/s; step p50 {1e3 * s['step_s_p50']:.1f} ms, "
                  f"p90 {1e3 * s['step_s_p90']:.1f} ms, p99 {1e3 * s['step_s_p99']:.1f} ms "
                  f"(first step {s['first_step_s']:.2f} s)",
                  f"  MFU {mfu} of measured peak ({s['mfu_reference']}){ds}",
                  f"  peak memory {s['peak_memory_bytes'] / 2**20:,.0f} MiB ({s['memory_method']})"]
        if "joules_per_token" in s:
            lines.append(f"  energy {s['joules_per_token'] * 1e3:.3f} mJ/token, {s['avg_watts']:.0f} W "
                         f"[{s['energy_method']}]")
    for smp in record["samples"]:
        if smp["name"] == "infer_cell":
            cs = smp["summary"]
            tp = (f", TPOT p50 {cs['tpot_ms_p50']:.2f} / p90 {cs['tpot_ms_p90']:.2f} / p99 {cs['tpot_ms_p99']:.2f} ms, "
                  f"{cs['decode_tokens_per_s']:,.0f} tok/s decode") if "tpot_ms_p50" in cs else ""
            lines.append(f"  batch {smp['batch']:>3} prompt {smp['prompt_len']:>5}: TTFT {cs['ttft_ms']:.2f} ms, "
                         f"{cs['prefill_tokens_per_s']:,.0f} tok/s prefill{tp}, "
                         f"peak mem {cs['peak_memory_bytes'] / 2**20:,.0f} MiB")
    if "joules_per_generated_token" in s:
        lines.append(f"  energy {s['joules_per_generated_token'] * 1e3:.3f} mJ/generated token [{s['energy_method']}]")
    lines.extend(f"  finding: {f}" for f in record["findings"])
    return "\n".join(lines)
