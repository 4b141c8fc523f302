"""``hwlm bench infer``: time prefill and decode on a grid of batch sizes and prompt lengths.

Over the grid, prefill (time to first token, TTFT) and greedy decode with the KV cache (time per output
token, TPOT p50/p90/p99), with throughputs and peak memory. Weights are cast to the inference data type,
as servers do, and on a CPU packed once for oneDNN (:mod:`hwlm.model.packing`) as ``hwlm generate`` and
``hwlm serve`` run them; the record's ``packed_layers`` counts them, and its peak memory holds the packed
copy. ``--run RUN`` times a trained or compressed run instead of a preset's random weights: it
loads through ``hwlm.train.load_model`` (a w8a8 / w8a16 / w4a16 run into its quantized modules; an
encrypted run with ``--key-file``), and the record's ``precision`` is the run's weight format, the name the
planner and calibration use. ``--backend onnx`` runs the same weights through onnxruntime.

The checks, memory readings and out-of-memory findings are those of :mod:`hwlm.bench.workloads`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from hwlm.bench.energy import EnergyMeter
from hwlm.bench.peak import is_oom
from hwlm.bench.records import make_record, spread
from hwlm.bench.workloads import (build_model, check_common, check_positive, fits_in_ram, free_memory, peak_memory,
                                  reset_peak)
from hwlm.device import synchronize, torch_dtype
from hwlm.errors import ConfigError, HardwareError
from hwlm.formulas import (WEIGHT_BYTES, forward_flops_per_token, kv_cache_bytes_per_token, lm_head_flops_per_token,
                            param_count)

__all__ = ["InferBenchConfig", "run_infer_bench"]


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


def run_infer_bench(cfg: InferBenchConfig) -> dict[str, Any]:
    """Time prefill and decode over the batch x prompt-length grid; return the record."""
    import torch

    from hwlm.device import select_device
    from hwlm.model.packing import pack_linears
    choice = select_device(cfg.device)
    device, kind = choice.device, choice.type
    check_common(kind, cfg.precision, "infer")
    if cfg.precision == "tf32":
        raise HardwareError("infer stores weights in fp32, bf16 or fp16; tf32 is a matmul mode: use fp32")
    check_positive(new_tokens=cfg.new_tokens, repeats=cfg.repeats)
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
        mcfg, model = build_model(cfg.model, device, max_len, cfg.seed, cfg.vocab_size)
        model, fmt = model.to(torch_dtype(cfg.precision)).eval(), {"precision": cfg.precision}
    onnx_model = _onnx_backend(model, cfg, kind) if cfg.backend != "torch" else None
    # On a CPU the linears run on weights packed once for oneDNN, as in hwlm generate and hwlm serve, so the
    # calibration learnt from this record describes them (hwlm.model.packing); elsewhere nothing is packed.
    packed_layers = pack_linears(model) if onnx_model is None else 0
    params = param_count(mcfg.to_arch()).total  # the planner's count: quantized weights are buffers, not parameters
    config = {**asdict(cfg), "device": device, "device_reason": choice.reason, "block_size": mcfg.block_size,
              "precision": fmt["precision"], "kv_dtype": cfg.precision, "packed_layers": packed_layers}
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
            reason = fits_in_ram(kind, need)
            if reason:
                findings.append(f"out of memory (estimated) at batch {b}, prompt {p}: {reason}")
                continue
            try:
                s = (_time_cell(model, mcfg, cfg, device, kind, b, p, weight_bytes) if onnx_model is None
                     else _time_cell_onnx(onnx_model, mcfg, cfg, kind, b, p, weight_bytes))
            except (RuntimeError, MemoryError) as exc:
                if not is_oom(exc):
                    raise
                free_memory(kind)
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
    reset_peak(kind)
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
    return _cell_summary(mcfg, cfg, b, p, ttft, tpot, kind, weight_bytes, logits_at_last=True)


def _load_run(cfg: InferBenchConfig, device: str, max_len: int) -> tuple[Any, Any, dict[str, Any]]:
    """(model config, model, weight format) of ``cfg.run``, loaded as ``hwlm generate`` loads it."""
    from hwlm.crypt import is_encrypted, optional_key
    from hwlm.train.load import load_model

    loaded = load_model(cfg.run, device, optional_key(cfg.key_file))
    if cfg.backend != "torch" and is_encrypted(loaded.path / "model.safetensors"):
        raise ConfigError(f"run {cfg.run} is encrypted: --backend {cfg.backend} would write its weights to a plain "
                          "temporary ONNX file; time it with --backend torch")
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
    reset_peak(kind)
    for r in range(cfg.repeats + 1):  # the first round warms up
        first, steps = om.timed_decode(torch.randint(0, mcfg.vocab_size, (b, p), generator=gen).numpy(),
                                       cfg.new_tokens)
        if r > 0:
            ttft.append(first)
            tpot.extend(steps)
    return _cell_summary(mcfg, cfg, b, p, ttft, tpot, kind, weight_bytes)


def _cell_summary(mcfg: Any, cfg: InferBenchConfig, b: int, p: int, ttft: list[float],
                  tpot: list[float], kind: str, weight_bytes: float, logits_at_last: bool = False) -> dict[str, Any]:
    """``logits_at_last``: the prefill computed the output layer at each row's last token only (the torch
    path's ``last_only=True``), so the other prompt tokens' output-layer FLOPs are not counted; the ONNX
    graph returns logits at every position."""
    arch = mcfg.to_arch()
    width = 4 if cfg.precision == "fp32" else 2
    t = spread(ttft)
    flops = b * p * forward_flops_per_token(arch, p)
    if logits_at_last:
        flops -= b * (p - 1) * lm_head_flops_per_token(arch)
    out: dict[str, Any] = {"ttft_ms": 1e3 * t["median"], "prefill_tokens_per_s": b * p / t["median"],
                           "prefill_flops_per_s": flops / t["median"]}
    d = None
    if tpot:
        d = spread(tpot)
        mid_ctx = p + cfg.new_tokens // 2
        # a decode step reads every weight once and the whole KV cache (at ``width``) of every sequence
        step_bytes = weight_bytes + b * mid_ctx * kv_cache_bytes_per_token(arch, width)
        out.update({"tpot_ms_p50": 1e3 * d["median"], "tpot_ms_p90": 1e3 * d["p90"], "tpot_ms_p99": 1e3 * d["p99"],
                    "decode_tokens_per_s": b / d["median"], "decode_bytes_per_s": step_bytes / d["median"]})
    mem = peak_memory(kind)
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
