"""``hwlm bench train`` and ``hwlm bench infer``: time real model work on random tokens.

train: full training steps (forward, backward, AdamW) of a preset model; reports tokens/s,
step time p50/p90/p99, MFU against the *measured* matmul peak (a peak record's, or
:func:`hwlm.train.runtime.quick_matmul_peak`) and, if given, against a datasheet peak, peak memory,
and energy per token. FLOPs per token come from :mod:`hwlm.formulas` (PaLM convention).

infer: over a grid of batch sizes and prompt lengths, prefill (time to first token, TTFT)
and greedy decode with the KV cache (time per output token, TPOT p50/p90/p99), with
throughputs and peak memory. Weights are cast to the inference data type, as servers do.
``--run RUN`` times a trained or compressed run instead of a preset's random weights: it loads
through ``hwlm.train.load_model`` (a w8a8 / w8a16 / w4a16 run into its quantized modules), and
the record's ``precision`` is the run's weight format, the name the planner and calibration use.

Out of memory (torch's OOM error, or a size whose estimate exceeds free RAM on the CPU)
is a finding in the record, "at what size", never a crash.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from hwlm.bench.energy import EnergyMeter
from hwlm.bench.peak import is_oom
from hwlm.bench.records import load_record, make_record, spread
from hwlm.errors import ConfigError, HardwareError
from hwlm.formulas import (WEIGHT_BYTES, forward_flops_per_token, kv_cache_bytes_per_token, mfu, param_count,
                           train_flops_per_token, training_memory)
from hwlm.device import measure_seconds, synchronize, torch_dtype
from hwlm.hw import memory_bytes

__all__ = ["TrainBenchConfig", "InferBenchConfig", "run_train_bench", "run_infer_bench", "format_workload"]

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


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


@dataclass
class InferBenchConfig:
    """What ``hwlm bench infer`` runs."""

    model: str = "tiny"
    device: str = "auto"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    prompt_lens: list[int] = field(default_factory=lambda: [32])
    new_tokens: int = 16
    repeats: int = 3
    precision: str = "fp32"             # data type of weights and KV cache: fp32 | bf16 | fp16
    energy: str = "auto"
    tdp_w: float | None = None
    seed: int = 0
    vocab_size: int | None = None
    backend: str = "torch"              # torch | onnx (the same weights exported, run by onnxruntime on the CPU)
    run: str | None = None              # a run (or compressed run) folder instead of the preset's random weights
    key_file: str | None = None         # an encrypted run's key file (else $HWLM_DATA_KEY): the path is recorded


def _check_common(device_kind: str, precision: str, what: str) -> None:
    if precision not in PRECISIONS:
        raise HardwareError(f"unknown precision '{precision}' for {what}; choose one of {', '.join(PRECISIONS)}")
    if precision == "tf32" and device_kind != "cuda":
        raise HardwareError(f"precision tf32 needs a CUDA GPU (device is {device_kind}); use fp32 or bf16")
    if precision == "fp16" and device_kind == "cpu" and what == "train":
        raise HardwareError("precision fp16 training needs a CUDA GPU (loss scaling); use bf16 or fp32 on the CPU")


def _positive(**values: int) -> None:
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


def _reset_peak(kind: str) -> None:
    if kind == "cuda":
        import torch
        torch.cuda.reset_peak_memory_stats()


def _peak_memory(kind: str) -> dict[str, Any]:
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


def _fits_in_ram(kind: str, need: float) -> str | None:
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


def _build_model(name: str, device: str, seq: int | None, seed: int, vocab_size: int | None) -> tuple[Any, Any]:
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
    _check_common(kind, cfg.precision, "train")
    _positive(batch=cfg.batch, steps=cfg.steps, **({"seq": cfg.seq} if cfg.seq is not None else {}))
    mcfg = _model_config(cfg.model, cfg.seq, cfg.vocab_size)
    seq = cfg.seq or mcfg.block_size
    config = {**asdict(cfg), "device": device, "device_reason": choice.reason, "seq": seq}
    findings: list[str] = []
    summary: dict[str, Any] = {"device": device}
    reference = _mfu_reference(cfg, device)  # first: a bad --peak-record fails before any work
    need = training_memory(mcfg.to_arch(), cfg.batch, seq, cfg.precision, compiled=cfg.compile, device_kind=kind).total
    too_big = _fits_in_ram(kind, need)
    if too_big:
        findings.append(f"out of memory (estimated) at model {cfg.model}, batch {cfg.batch}, seq {seq}: {too_big}")
        return make_record("train", config, [], summary, findings)
    try:
        sample = _time_training(cfg, device, kind, seq)
    except (RuntimeError, MemoryError) as exc:
        if not is_oom(exc):
            raise
        _free(kind)
        findings.append(f"out of memory at model {cfg.model}, batch {cfg.batch}, seq {seq} ({cfg.precision})")
        return make_record("train", config, [], summary, findings)
    summary.update(_train_summary(cfg, sample, reference, findings))
    return make_record("train", config, [sample], summary, findings)


def _time_training(cfg: TrainBenchConfig, device: str, kind: str, seq: int) -> dict[str, Any]:
    import torch
    mcfg, model = _build_model(cfg.model, device, seq, cfg.seed, cfg.vocab_size)
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
    _reset_peak(kind)
    meter = EnergyMeter(device, cfg.energy, cfg.tdp_w)
    meter.start()
    secs = measure_seconds(step, device, warmup=max(0, cfg.warmup - 1), repeats=cfg.steps)
    energy = meter.stop()
    return {"name": "train_step", "step_seconds": secs, "first_step_seconds": first_step_s,
            "params": model.num_params(), "tokens_per_step": cfg.batch * seq, "energy": energy.to_dict(),
            "train_flops_per_token": train_flops_per_token(mcfg.to_arch(), seq),
            "energy_covers_warmup_steps": max(0, cfg.warmup - 1), **_peak_memory(kind)}


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


def _free(kind: str) -> None:
    import gc
    gc.collect()
    if kind == "cuda":
        import torch
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- inference


def run_infer_bench(cfg: InferBenchConfig) -> dict[str, Any]:
    """Time prefill and decode over the batch x prompt-length grid; return the record."""
    import torch

    from hwlm.device import select_device
    choice = select_device(cfg.device)
    device, kind = choice.device, choice.type
    _check_common(kind, cfg.precision, "infer")
    if cfg.precision == "tf32":
        raise HardwareError("infer stores weights in fp32, bf16 or fp16; tf32 is a matmul mode: use fp32")
    _positive(new_tokens=cfg.new_tokens, repeats=cfg.repeats)
    for flag, values in (("batch-sizes", cfg.batch_sizes), ("prompt-lens", cfg.prompt_lens)):
        if not values or min(values) < 1:
            raise HardwareError(f"--{flag} needs one or more values of at least 1, got {values}")
    if cfg.key_file is not None and cfg.run is None:
        raise ConfigError("--key-file opens an encrypted --run; without --run the weights are random: give --run "
                          "RUN or drop --key-file")
    max_len = max(cfg.prompt_lens) + cfg.new_tokens
    if cfg.run is not None:
        mcfg, model, fmt = _load_run(cfg, device, max_len)
    else:
        mcfg, model = _build_model(cfg.model, device, max_len, cfg.seed, cfg.vocab_size)
        model, fmt = model.to(torch_dtype(cfg.precision)).eval(), {"precision": cfg.precision}
    onnx_model = _onnx_backend(model, cfg, kind) if cfg.backend != "torch" else None
    params = param_count(mcfg.to_arch()).total  # the planner's count: quantized weights are buffers, not parameters
    config = {**asdict(cfg), "device": device, "device_reason": choice.reason, "block_size": mcfg.block_size,
              "precision": fmt["precision"], "kv_dtype": cfg.precision}
    if cfg.run is not None:
        config.update(model=_run_model_name(model, cfg.run), format=fmt, model_config=_config_dict(mcfg))
    # a decode step reads every weight once (in its stored format) and the whole KV cache of every sequence
    weight_bytes = params * WEIGHT_BYTES[fmt["precision"]]
    samples, findings = [], []
    summary: dict[str, Any] = {"device": device, "params": params, "weight_bytes": weight_bytes}
    meter = EnergyMeter(device, cfg.energy, cfg.tdp_w)
    meter.start()
    for b in cfg.batch_sizes:
        for p in cfg.prompt_lens:
            need = params * 4 + b * (p + cfg.new_tokens) * kv_cache_bytes_per_token(
                mcfg.to_arch(), 4) + b * p * mcfg.n_embd * 4 * 8 + b * mcfg.vocab_size * 4
            reason = _fits_in_ram(kind, need)
            if reason:
                findings.append(f"out of memory (estimated) at batch {b}, prompt {p}: {reason}")
                continue
            try:
                s = (_time_cell(model, mcfg, cfg, device, kind, b, p, weight_bytes) if onnx_model is None
                     else _time_cell_onnx(onnx_model, mcfg, cfg, kind, b, p, weight_bytes))
            except (RuntimeError, MemoryError) as exc:
                if not is_oom(exc):
                    raise
                _free(kind)
                findings.append(f"out of memory at batch {b}, prompt {p}, {cfg.new_tokens} new tokens")
                continue
            samples.append(s)
            summary.update({f"b{b}_p{p}_{k}": v for k, v in s["summary"].items()})
    energy = meter.stop()
    _infer_totals(samples, summary, energy, findings)
    return make_record("infer", config, samples, summary, findings)


def _time_cell(model: Any, mcfg: Any, cfg: InferBenchConfig, device: str, kind: str, b: int, p: int,
               weight_bytes: float) -> dict[str, Any]:
    """One grid cell: ``repeats`` x (prefill of a (b, p) prompt, then new_tokens - 1 decode steps)."""
    import torch

    from hwlm.model import KVCache
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + b * 7919 + p)
    dtype = torch_dtype(cfg.precision)
    ttft, tpot = [], []
    _reset_peak(kind)
    with torch.inference_mode():
        for r in range(cfg.repeats + 1):  # the first round warms up kernels and the allocator
            prompt = torch.randint(0, mcfg.vocab_size, (b, p), generator=gen).to(device)
            cache = KVCache(mcfg, b, max_len=p + cfg.new_tokens, device=device, dtype=dtype)
            synchronize(device)
            t0 = time.perf_counter()
            logits, _ = model(prompt, cache=cache, start_pos=0, last_only=True)
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1) greedy
            synchronize(device)
            t_first = time.perf_counter() - t0
            steps = []
            for i in range(cfg.new_tokens - 1):
                t0 = time.perf_counter()
                logits, _ = model(nxt, cache=cache, start_pos=p + i, last_only=True)
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                synchronize(device)
                steps.append(time.perf_counter() - t0)
            if r > 0:
                ttft.append(t_first)
                tpot.extend(steps)
    return _cell_summary(mcfg, cfg, b, p, ttft, tpot, kind, weight_bytes)


def _load_run(cfg: InferBenchConfig, device: str, max_len: int) -> tuple[Any, Any, dict[str, Any]]:
    """(model config, model, weight format) of ``cfg.run``, loaded as ``hwlm generate`` loads it."""
    from hwlm.crypt import optional_key
    from hwlm.train.load import load_model

    loaded = load_model(cfg.run, device, optional_key(cfg.key_file))
    mcfg = loaded.model_cfg
    fmt = dict((loaded.run_config or {}).get("compression") or {"precision": "fp32"})
    if max_len > mcfg.block_size:
        raise HardwareError(f"prompt {max(cfg.prompt_lens)} + {cfg.new_tokens} new tokens exceed run {cfg.run}'s "
                            f"{mcfg.block_size}-token context: shorten --prompt-lens or --new-tokens")
    if fmt["precision"] != "fp32":
        if cfg.precision != "fp32":
            raise HardwareError(f"run {cfg.run} stores {fmt['precision']} weights; --precision {cfg.precision} "
                                f"would cast a float model: leave --precision at fp32 (activations and KV cache)")
        if cfg.backend != "torch":
            raise HardwareError(f"--backend onnx runs float weights; for run {cfg.run} ({fmt['precision']}) export "
                                f"the original run with hwlm export --format onnx --quantize int8|int4")
        return mcfg, loaded.model.eval(), fmt
    fmt["precision"] = cfg.precision  # a float run is cast, as for a preset
    return mcfg, loaded.model.to(torch_dtype(cfg.precision)).eval(), fmt


def _run_model_name(model: Any, run: str) -> str:
    """The preset name when the run's shape is one (the report and planner know presets), else the folder name."""
    from pathlib import Path

    from hwlm.model import ModelConfig
    from hwlm.model.config import PRESETS
    for name in PRESETS:
        if ModelConfig.from_name(name, vocab_size=model.cfg.vocab_size, block_size=model.cfg.block_size) == model.cfg:
            return name
    return Path(run).resolve().name


def _config_dict(mcfg: Any) -> dict[str, Any]:
    from hwlm.config import to_dict
    return to_dict(mcfg)


def _onnx_backend(model: Any, cfg: InferBenchConfig, kind: str) -> Any:
    """The model exported to ONNX (fp32, in a temp folder) and opened with onnxruntime."""
    import tempfile
    from pathlib import Path

    from hwlm.export.onnx import OnnxModel, export_onnx
    if cfg.backend != "onnx":
        raise HardwareError(f"unknown inference backend {cfg.backend!r}; choose torch or onnx")
    if kind != "cpu" or cfg.precision != "fp32":
        raise HardwareError("--backend onnx runs fp32 on the CPU (onnxruntime's CPU provider): use --device cpu "
                            "--precision fp32")
    with tempfile.TemporaryDirectory(prefix="hwlm-onnx-") as tmp:
        return OnnxModel.load(export_onnx(model, Path(tmp) / "export"))  # the session holds the graph


def _time_cell_onnx(om: Any, mcfg: Any, cfg: InferBenchConfig, kind: str, b: int, p: int, weight_bytes: float
                    ) -> dict[str, Any]:
    """``_time_cell`` through onnxruntime: the same prompts, rounds and greedy steps."""
    import torch
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + b * 7919 + p)
    ttft, tpot = [], []
    _reset_peak(kind)
    for r in range(cfg.repeats + 1):  # the first round warms up
        first, steps = om.timed_decode(torch.randint(0, mcfg.vocab_size, (b, p), generator=gen).numpy(),
                                       cfg.new_tokens)
        if r > 0:
            ttft.append(first)
            tpot.extend(steps)
    return _cell_summary(mcfg, cfg, b, p, ttft, tpot, kind, weight_bytes)


def _cell_summary(mcfg: Any, cfg: InferBenchConfig, b: int, p: int, ttft: list[float],
                  tpot: list[float], kind: str, weight_bytes: float) -> dict[str, Any]:
    arch = mcfg.to_arch()
    width = 4 if cfg.precision == "fp32" else 2
    t = spread(ttft)
    out: dict[str, Any] = {"ttft_ms": 1e3 * t["median"], "prefill_tokens_per_s": b * p / t["median"],
                           "prefill_flops_per_s": b * p * forward_flops_per_token(arch, p) / t["median"]}
    d = None
    if tpot:
        d = spread(tpot)
        mid_ctx = p + cfg.new_tokens // 2
        # a decode step reads every weight once and the whole KV cache (at ``width``) of every sequence
        step_bytes = weight_bytes + b * mid_ctx * kv_cache_bytes_per_token(arch, width)
        out.update({"tpot_ms_p50": 1e3 * d["median"], "tpot_ms_p90": 1e3 * d["p90"], "tpot_ms_p99": 1e3 * d["p99"],
                    "decode_tokens_per_s": b / d["median"], "decode_bytes_per_s": step_bytes / d["median"]})
    mem = _peak_memory(kind)
    out["peak_memory_bytes"] = mem["peak_memory_bytes"]
    return {"name": "infer_cell", "batch": b, "prompt_len": p, "new_tokens": cfg.new_tokens,
            "ttft_seconds": ttft, "tpot_seconds": tpot, "ttft": t, "tpot": d, "memory_method": mem["memory_method"],
            "summary": out}


def _infer_totals(samples: list[dict], summary: dict[str, Any], energy: Any, findings: list[str]) -> None:
    """Best throughputs over the grid, and energy per generated token."""
    cells = [s["summary"] for s in samples]
    for key in ("prefill_tokens_per_s", "prefill_flops_per_s", "decode_tokens_per_s", "decode_bytes_per_s"):
        vals = [c[key] for c in cells if key in c]
        if vals:
            summary[f"max_{key}"] = max(vals)
    if not samples:
        findings.append("no grid cell ran")
        return
    generated = sum(s["batch"] * s["new_tokens"] * (len(s["ttft_seconds"]) + 1) for s in samples)
    if energy.joules:
        summary.update({"joules_per_generated_token": energy.joules / generated, "avg_watts": energy.watts,
                        "energy_method": energy.method, "energy_covers": "whole grid including warm-up rounds"})
    else:
        findings.append(f"energy not measured: {energy.detail}")


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
