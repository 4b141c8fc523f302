"""``hwlm plan``: predict time, memory, energy, CO2 and cost of training and serving; pick hardware.

Torch-free and fast: it imports only :mod:`hwlm.plan`. Numbers accept SI suffixes
(``--tokens 2T``, ``2e12``, ``300B``); durations accept ``s/m/h/d/w`` (``--deadline 30d``).

    hwlm plan train --model llama-2-7b --tokens 2T --hardware a100-80gb --devices 256 --explain
    hwlm plan infer --model llama-3.1-8b --hardware h100 --devices 1 --batch 8 --prompt-len 1024 --gen-len 256
    hwlm plan serve --model deepseek-v3 --hardware h200 --devices 8 --precision fp8 --rate 50 --slo-ttft 2
    hwlm plan recommend --model llama-2-70b --tokens 2T --deadline 30d --objective cost
    hwlm plan optimal --flops 1e23
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from hwlm.crypt import KEY_FILE_HELP  # torch-free core; cryptography is imported only to decrypt
from hwlm.errors import PlanError

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15, "e": 1e18}
_DUR = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_number(text: str) -> float:
    """``'2T'`` -> 2e12, ``'1.4e12'``, ``'300B'``, ``'7k'``, ``'1_000'``."""
    s = str(text).strip().lower().replace("_", "").replace(",", "")
    m = re.fullmatch(r"([0-9.]+(?:e[+-]?[0-9]+)?)\s*([kmbgtpe]?)", s)
    if not m:
        raise PlanError(f"cannot read the number {text!r}; write e.g. 2e12, 2T, 300B or 7M")
    try:
        return float(m.group(1)) * _SI[m.group(2)]
    except ValueError:
        raise PlanError(f"cannot read the number {text!r}; write e.g. 2e12, 2T, 300B or 7M") from None


def parse_duration(text: str) -> float:
    """``'30d'`` -> seconds; plain numbers are seconds."""
    m = re.fullmatch(r"([0-9.]+(?:e[+-]?[0-9]+)?)\s*(s|min|m|h|d|w)?", str(text).strip().lower())
    if not m:
        raise PlanError(f"cannot read the duration {text!r}; write e.g. 3600, 12h, 30d or 2w")
    return float(m.group(1)) * _DUR[m.group(2) or ""]


def _arg(fn: Any) -> Any:
    """Wrap a parser so argparse reports its PlanError as a one-line usage error."""
    def parse(text: str) -> Any:
        try:
            return fn(text)
        except PlanError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = fn.__name__
    return parse


def _whole(text: str) -> int:
    v = parse_number(text)
    if v != int(v):
        raise PlanError(f"{text!r} must be a whole number")
    return int(v)


_int = _arg(_whole)
_num = _arg(parse_number)
_dur = _arg(parse_duration)


def _common(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    p.add_argument("--model", required=model_required,
                   help="preset name (see `hwlm plan models`) or a config.json path")
    p.add_argument("--hardware", default=None,
                   help="catalog id (see `hwlm plan hardware`), or this-machine with --calibration FILE from "
                        "`hwlm bench calibrate --hardware this-machine` (the default when --calibration is given)")
    p.add_argument("--devices", type=_int, default=1, help="number of devices (default 1)")
    p.add_argument("--calibration", help="calibration JSON from `hwlm bench calibrate` (replaces the priors)")
    p.add_argument("--pue", type=float, default=None, help="data-centre PUE (default 1.2)")
    p.add_argument("--grid-intensity", type=float, default=None, help="kg CO2 per kWh (default 0.475, world)")
    p.add_argument("--price-per-hour", type=float, default=None, help="USD per device-hour (default: catalog)")
    p.add_argument("--power-w", type=float, default=None, help="watts per device (default: catalog TDP)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--explain", action="store_true", help="print every term with its formula and source")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hwlm plan`` and its sub-commands."""
    plan = subparsers.add_parser("plan", help="predict time, memory, energy and cost of training and serving")
    sub = plan.add_subparsers(dest="plan_command", metavar="PLAN_COMMAND")
    plan.set_defaults(func=lambda a: (plan.print_help(), 2)[1])

    from hwlm.plan.jobs import InferenceJob, TrainingJob, field_help

    def th(name: str) -> str:
        return field_help(TrainingJob, name)

    def ih(name: str) -> str:
        return field_help(InferenceJob, name)

    t = sub.add_parser("train", help="estimate a training run")
    _common(t, model_required=False)
    t.add_argument("--tokens", type=_num, help=th("tokens") + " (required with --model)")
    _classifier_arguments(t)
    t.add_argument("--precision", default="bf16", help=th("precision") + " (default bf16)")
    t.add_argument("--framework", help=th("framework"))
    t.add_argument("--seq-len", type=_int, help=th("seq_len"))
    t.add_argument("--global-batch", type=_int, help=th("global_batch"))
    t.add_argument("--tp", type=_int, help=th("tp"))
    t.add_argument("--pp", type=_int, help=th("pp"))
    t.add_argument("--ep", type=_int, help=th("ep"))
    t.add_argument("--capacity-factor", type=_num, help=th("capacity_factor"))
    t.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], help=th("zero_stage"))
    t.add_argument("--fsdp", action="store_true", help="same as --zero-stage 3")
    t.add_argument("--recompute", choices=["none", "selective", "full"], help=th("recompute"))
    t.add_argument("--micro-batch", type=_int, help=th("micro_batch"))
    t.set_defaults(func=_train)

    i = sub.add_parser("infer", help="estimate the latency of one batch (see `plan serve` for traffic)")
    _common(i)
    i.add_argument("--batch", type=_int, default=1, help=ih("batch") + " (default 1)")
    i.add_argument("--prompt-len", type=_int, default=512, help=ih("prompt_len") + " (default 512)")
    i.add_argument("--gen-len", type=_int, default=256, help=ih("gen_len") + " (default 256)")
    i.add_argument("--precision", default="bf16", help=ih("precision") + " (default bf16)")
    i.add_argument("--tp", type=_int, help=ih("tp"))
    i.add_argument("--ep", type=_int, help=ih("ep"))
    i.add_argument("--engine", help=ih("engine"))
    i.add_argument("--cuda-graphs", action="store_true", default=None,
                   help="force CUDA graphs on (the engine decides by default: vllm, tensorrt-llm and gpt-fast "
                        "use them; hf and hwlm run eagerly, as `hwlm bench infer` does)")
    i.add_argument("--allow-beyond-context", action="store_true", help=ih("allow_beyond_context"))
    i.set_defaults(func=_infer)

    from hwlm.plan.jobs import ServingJob

    def sh(name: str) -> str:
        return field_help(ServingJob, name)

    v = sub.add_parser("serve", help="continuous batching under a load: throughput, TTFT/ITL percentiles, fleet size")
    _common(v)
    load = v.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=_int, help=sh("concurrency"))
    load.add_argument("--rate", type=_num, help=sh("rate"))
    v.add_argument("--prompt-len", type=_int, default=512, help=sh("prompt_len") + " (default 512)")
    v.add_argument("--gen-len", type=_int, default=256, help=sh("gen_len") + " (default 256)")
    v.add_argument("--precision", default="bf16", help=sh("precision") + " (default bf16)")
    v.add_argument("--engine", help=sh("engine"))
    v.add_argument("--ep", type=_int, help=sh("ep"))
    v.add_argument("--max-batch", type=_int, help=sh("max_batch"))
    v.add_argument("--slo-ttft", type=_dur, help=sh("slo_ttft") + " (0.5, 500ms is written 0.5)")
    v.add_argument("--slo-itl", type=_dur, help=sh("slo_itl"))
    v.add_argument("--allow-beyond-context", action="store_true", help=sh("allow_beyond_context"))
    v.set_defaults(func=_serve)

    h = sub.add_parser("hardware", help="list catalog devices, or describe one")
    h.add_argument("id", nargs="?", help="device id to describe")
    h.add_argument("--kind", help="only this kind: cpu, gpu, tpu, accelerator, fpga, asic")
    h.add_argument("--json", action="store_true", help="print machine-readable JSON")
    h.set_defaults(func=_hardware)

    m = sub.add_parser("models", help="list model presets")
    m.add_argument("--json", action="store_true", help="print machine-readable JSON")
    m.set_defaults(func=_models)
    _register_choosers(sub)


def _register_choosers(sub: argparse._SubParsersAction) -> None:
    """``hwlm plan recommend`` and ``hwlm plan optimal``."""
    r = sub.add_parser("recommend", help="rank hardware for a training or serving job")
    r.add_argument("--model", required=True, help="preset name or config.json path")
    r.add_argument("--tokens", type=_num, help="training tokens (omit for serving)")
    r.add_argument("--serve-tokens", type=_num, help="output tokens to serve (serving; default 1M)")
    r.add_argument("--rate", type=_num, help="requests per second to carry (serving under load: the fleet per device; "
                   "replicas over several nodes with expert parallelism for an MoE model no node holds)")
    r.add_argument("--slo-ttft", type=_dur, help="p90 time-to-first-token objective, seconds (with --rate)")
    r.add_argument("--slo-itl", type=_dur, help="p90 inter-token-latency objective, seconds (with --rate)")
    r.add_argument("--batch", type=_int, help="serving batch (serving)")
    r.add_argument("--prompt-len", type=_int, help="serving prompt length")
    r.add_argument("--gen-len", type=_int, help="serving generation length")
    r.add_argument("--deadline", type=_dur, help="drop options slower than this (3600, 12h, 30d)")
    r.add_argument("--budget", type=_num, help="drop options costing more USD than this")
    r.add_argument("--objective", default="time", help="time | cost | energy (default time)")
    r.add_argument("--precision", default="bf16", help="data type (default bf16)")
    r.add_argument("--kind", help="only this hardware kind")
    r.add_argument("--max-devices", type=_int, default=16384, help="largest device count tried (default 16384)")
    r.add_argument("--top", type=_int, default=None,
                   help="show the N best options overall (default: the best of each hardware family)")
    r.add_argument("--json", action="store_true", help="print machine-readable JSON")
    r.set_defaults(func=_recommend)

    o = sub.add_parser("optimal", help="compute-optimal model size for a budget (Chinchilla)")
    o.add_argument("--flops", type=_num, help="compute budget in FLOPs (1e23)")
    o.add_argument("--hardware", help="catalog id (with --hours or --usd)")
    o.add_argument("--devices", type=_int, default=1, help="devices (with --hardware)")
    o.add_argument("--hours", type=float, help="wall-clock hours (with --hardware)")
    o.add_argument("--usd", type=_num, help="budget in USD (with --hardware)")
    o.add_argument("--law", default="chinchilla", help="chinchilla (Hoffmann 2022) | epoch (Besiroglu 2024)")
    o.add_argument("--json", action="store_true", help="print machine-readable JSON")
    o.set_defaults(func=_optimal)


def _env_kw(a: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"calibration": a.calibration, "price_per_hour": a.price_per_hour, "power_w": a.power_w}
    if a.pue is not None:
        kw["pue"] = a.pue
    if a.grid_intensity is not None:
        kw["grid_intensity"] = a.grid_intensity
    return kw


def _emit(a: argparse.Namespace, data: dict[str, Any], text: str, terms: list | None = None) -> int:
    if a.json:
        if not getattr(a, "explain", False):
            data = {k: v for k, v in data.items() if k != "terms"}
        print(json.dumps(data, indent=2))
        return 0
    print(text)
    if terms is not None and getattr(a, "explain", False):
        from hwlm.plan.explain import format_terms
        print("\nHow this was computed:\n" + format_terms(terms))
    return 0


def _gb(b: float) -> str:
    return f"{b / 1e9:.1f} GB"


def _money(x: float | None) -> str:
    return "n/a (no price)" if x is None else f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


def _classifier_arguments(t: argparse.ArgumentParser) -> None:
    """``hwlm plan train --config RECIPE``: an LSTM, MLP or bag-of-words recipe (hwlm.plan.classifier)."""
    g = t.add_argument_group("classifier recipes (instead of --model and --tokens)")
    g.add_argument("--config", metavar="RECIPE", help="classifier recipe (lstm-sentences, digits-mlp or a TOML file)")
    g.add_argument("--data", help="a `hwlm prepare --task classify` folder: its examples, classes and token lengths")
    g.add_argument("--examples", type=_int, help="training examples (default: --data's, else the recipe's [plan])")
    g.add_argument("--mean-len", type=float, help="tokens per text (default: --data's, else the recipe's [plan])")
    g.add_argument("--key-file", metavar="FILE", help=f"with --data: {KEY_FILE_HELP}")


def _train_classifier(a: argparse.Namespace) -> int:
    from hwlm.crypt import optional_key, warn_unused_key
    from hwlm.plan.classifier import estimate_classifier, job_from_recipe

    if a.model or a.tokens:
        raise PlanError("give either --config RECIPE (a classifier) or --model and --tokens, not both")
    if a.devices != 1:
        raise PlanError("hwlm trains classifiers on one device: drop --devices")
    if a.key_file and not a.data:
        raise PlanError("--key-file opens an encrypted --data folder: give --data DIR or drop --key-file")
    warn_unused_key(a.key_file, [a.data])
    key = optional_key(a.key_file)  # torch-free (hwlm.crypt); a loose or missing key file is one line here
    job = job_from_recipe(a.config, a.hardware, data=a.data, key=key, examples=a.examples, mean_len=a.mean_len,
                          steps_len=a.mean_len, **_env_kw(a))
    e = estimate_classifier(job)
    energy = "n/a" if e.energy_kwh is None else f"{e.energy_kwh * 1000:,.3g} Wh, {e.co2_kg * 1000:,.3g} g CO2"
    ij = "n/a" if e.infer_energy_per_example_j is None else f"{e.infer_energy_per_example_j:.3g} J/example"
    lines = [f"train the {e.kind} classifier of {a.config} ({e.params:,} parameters) on {e.examples:,} examples, "
             f"1 x {e.hardware}, fp32",
             f"  fits         {'yes' if e.fits else 'NO'} ({e.memory_bytes / 1e6:,.1f} MB: weights, gradients, AdamW, "
             "activations)",
             f"  compute      {e.flops:.3g} FLOP in {e.steps:,} steps, predicted MFU {e.mfu:.2%}",
             f"  throughput   {e.tokens_per_s:,.0f} tokens/s, {e.examples_per_s:,.0f} examples/s "
             f"({e.step_time_s * 1e3:.3g} ms per step)",
             f"  time         {e.time_s:,.1f} s ({e.train_time_s:,.1f} s training + {e.eval_time_s:,.1f} s evaluation)",
             f"  energy       {energy}", f"  cost         {_money(e.cost_usd)}",
             f"  inference    {e.infer_examples_per_s:,.0f} examples/s in batches of {job.infer_batch} "
             f"({e.infer_batch_s * 1e3:.3g} ms each), {ij}, {_money(e.infer_cost_per_million_usd)} per million"]
    lines += [f"  note: {n}" for n in e.notes]
    return _emit(a, e.to_dict(), "\n".join(lines), e.terms)


def _train(a: argparse.Namespace) -> int:
    from hwlm.plan import TrainingJob, estimate_training

    if a.config:
        return _train_classifier(a)
    if not a.model or not a.tokens:
        raise PlanError("plan train needs --model and --tokens (or --config RECIPE for a classifier recipe)")
    job = TrainingJob(model=a.model, tokens=a.tokens, hardware=a.hardware, devices=a.devices, precision=a.precision,
                      seq_len=a.seq_len, global_batch=a.global_batch, framework=a.framework, tp=a.tp, pp=a.pp,
                      ep=a.ep, capacity_factor=a.capacity_factor, zero_stage=3 if a.fsdp else a.zero_stage,
                      recompute=a.recompute,
                      micro_batch=a.micro_batch, **_env_kw(a))
    e = estimate_training(job)
    energy = "n/a" if e.energy_kwh is None else f"{e.energy_kwh:,.0f} kWh, {e.co2_kg / 1000:,.1f} t CO2"
    lines = [f"train {e.model} on {e.tokens:.3g} tokens, {e.devices} x {e.hardware}, {e.precision}",
             f"  layout       {e.layout.describe()}",
             f"  fits         {'yes' if e.fits else 'NO: smallest that fits: ' + str(e.smallest_fitting)}",
             f"  memory       {_gb(e.memory.total)} per device (weights {_gb(e.memory.weights)}, grads "
             f"{_gb(e.memory.gradients)}, optimizer {_gb(e.memory.optimizer)}, activations {_gb(e.memory.activations)})",
             f"  compute      {e.flops:.3g} FLOP, predicted MFU {e.mfu:.1%}",
             f"  throughput   {e.tokens_per_s:,.0f} tokens/s steady state ({e.step_time_s:.4g} s per step)",
             f"  time         {e.time_s / 86400:,.2f} days ({e.device_hours:,.0f} device-hours; whole run, "
             f"incl. {e.overhead_time_s / max(e.time_s, 1e-30):.0%} for evals, checkpoints, restarts)",
             f"  energy       {energy}", f"  cost         {_money(e.cost_usd)}"]
    lines += [f"  note: {n}" for n in e.notes if not n.startswith("layout:")]
    return _emit(a, e.to_dict(), "\n".join(lines), e.terms)


def _infer(a: argparse.Namespace) -> int:
    from hwlm.plan import InferenceJob, estimate_inference

    job = InferenceJob(model=a.model, hardware=a.hardware, devices=a.devices, batch=a.batch, prompt_len=a.prompt_len,
                       gen_len=a.gen_len, precision=a.precision, tp=a.tp, ep=a.ep, engine=a.engine,
                       cuda_graphs=a.cuda_graphs,
                       allow_beyond_context=a.allow_beyond_context, **_env_kw(a))
    e = estimate_inference(job)
    ept = "n/a" if e.energy_per_token_j is None else f"{e.energy_per_token_j:.3g} J/token"
    ep = f", ep={e.ep}" if e.ep > 1 else ""
    lines = [f"serve {e.model} on {e.devices} x {e.hardware} (tp={e.tp}{ep}), {e.precision}, batch {e.batch}, "
             f"prompt {e.prompt_len}, gen {e.gen_len}",
             f"  fits         {'yes' if e.fits else 'NO'} ({_gb(e.memory_per_device_bytes)} per device; "
             f"max batch {e.max_batch}, max context {e.max_context:,} at this batch)",
             f"  TTFT         {e.ttft_s * 1e3:,.1f} ms", f"  TPOT         {e.tpot_s * 1e3:,.2f} ms",
             f"  throughput   {e.throughput_tokens_per_s:,.0f} tokens/s", f"  energy       {ept}",
             f"  cost         {_money(e.cost_per_million_tokens_usd)} per million tokens"]
    lines += [f"  note: {n}" for n in e.notes]
    return _emit(a, e.to_dict(), "\n".join(lines), e.terms)


def _ms(x: float) -> str:
    return f"{x * 1e3:,.1f} ms"


def _serve(a: argparse.Namespace) -> int:
    from hwlm.plan import ServingJob, estimate_serving

    job = ServingJob(model=a.model, hardware=a.hardware, devices=a.devices, concurrency=a.concurrency, rate=a.rate,
                     prompt_len=a.prompt_len, gen_len=a.gen_len, precision=a.precision, engine=a.engine, ep=a.ep,
                     max_batch=a.max_batch, slo_ttft=a.slo_ttft, slo_itl=a.slo_itl,
                     allow_beyond_context=a.allow_beyond_context, **_env_kw(a))
    e = estimate_serving(job)
    load = f"concurrency {e.concurrency}" if e.concurrency is not None else f"{e.rate:g} requests/s"
    lines = [f"serve {e.model} on {e.replicas} replica(s) x {e.devices} x {e.hardware}"
             f"{f' (ep={e.ep})' if e.ep > 1 else ''} with {e.engine}, {e.precision}, "
             f"{load}, prompt {e.prompt_len}, gen {e.gen_len}",
             f"  throughput   {e.output_tokens_per_s:,.0f} output tokens/s ({e.requests_per_s:.3g} requests/s); "
             f"one replica at most {e.capacity_requests_per_s:.3g} requests/s",
             f"  batch        {e.mean_batch:.1f} running on average, at most {e.batch_limit} ({e.limited_by}); "
             f"KV cache {e.kv_capacity_tokens:,} tokens",
             f"  TTFT         p50 {_ms(e.ttft_p50_s)}, p90 {_ms(e.ttft_p90_s)}, p99 {_ms(e.ttft_p99_s)} "
             f"(alone {_ms(e.single_ttft_s)})",
             f"  ITL          p50 {_ms(e.itl_p50_s)}, p90 {_ms(e.itl_p90_s)}, p99 {_ms(e.itl_p99_s)} "
             f"(alone {_ms(e.single_itl_s)})",
             f"  energy       {'n/a' if e.energy_per_token_j is None else f'{e.energy_per_token_j:.3g} J/token'}",
             f"  cost         {_money(e.cost_per_million_tokens_usd)} per million output tokens"]
    lines += [f"  note: {n}" for n in e.notes]
    return _emit(a, e.to_dict(), "\n".join(lines), e.terms)


def _hardware(a: argparse.Namespace) -> int:
    from hwlm.plan.catalog import format_device, get_device, list_devices

    if a.id:
        dev = get_device(a.id)
        data = {"id": dev.id, "name": dev.name, "kind": dev.kind, "flops": dict(dev.flops),
                "memory_bytes": dev.memory_bytes, "memory_bw": dev.memory_bw, "intra_node_bw": dev.intra_node_bw,
                "inter_node_bw": dev.inter_node_bw, "devices_per_node": dev.devices_per_node, "tdp_w": dev.tdp_w,
                "price_per_hour": dev.price_per_hour, "sources": dict(dev.sources)}
        return _emit(a, data, format_device(dev))
    devs = list_devices(a.kind)
    rows = [f"{'id':<22} {'kind':<11} {'bf16/fp16 TFLOP/s':>17} {'memory':>9} {'bandwidth':>11} {'$/h':>7}"]
    for d in devs:
        peak = d.flops.get("bf16") or d.flops.get("fp16") or d.flops.get("fp32")
        price = f"{d.price_per_hour:.2f}" if d.price_per_hour else "-"
        rows.append(f"{d.id:<22} {d.kind:<11} {(peak or 0) / 1e12:>17,.0f} {d.memory_bytes / 1e9:>7,.0f}GB "
                    f"{d.memory_bw / 1e12:>8.2f}TB/s {price:>7}")
    return _emit(a, {"devices": [d.id for d in devs]}, "\n".join(rows))


def _models(a: argparse.Namespace) -> int:
    from hwlm.plan import list_models

    ms = list_models()
    rows = [f"{'name':<18} {'params':>9} {'active':>9} {'layers':>6} {'d_model':>7} {'heads':>8}  type"]
    for m in ms:
        s = m.spec
        rows.append(f"{m.name:<18} {m.params.total / 1e9:>8.2f}B {m.params.active / 1e9:>8.2f}B {s.n_layers:>6} "
                    f"{s.d_model:>7} {s.n_heads:>4}/{s.kv_heads:<3}  {m.model_type}")
    data = {"models": [{"name": m.name, "params": m.params.total, "active_params": m.params.active,
                        "model_type": m.model_type, "source": m.source} for m in ms]}
    return _emit(a, data, "\n".join(rows))


def _recommend(a: argparse.Namespace) -> int:
    from hwlm.plan import recommend

    inference = serving = None
    if a.rate is not None:
        serving = {"rate": a.rate, "prompt_len": a.prompt_len, "gen_len": a.gen_len, "slo_ttft": a.slo_ttft,
                   "slo_itl": a.slo_itl}
    elif a.tokens is None:
        inference = {k: v for k, v in (("batch", a.batch), ("prompt_len", a.prompt_len), ("gen_len", a.gen_len),
                                       ("tokens", int(a.serve_tokens) if a.serve_tokens else None)) if v}
    r = recommend(a.model, tokens=a.tokens, inference=inference, serving=serving, deadline_s=a.deadline,
                  budget_usd=a.budget,
                  objective=a.objective, precision=a.precision, kind=a.kind, max_devices=a.max_devices, top=a.top)
    lines = [f"{r.model}: {r.workload}; best by {r.objective}",
             f"  {'family':<17} {'hardware':<20} {'devices':>7} {'time':>12} {'cost':>14} {'energy':>12}  layout"]
    for o in r.options:
        en = "unknown TDP" if o.energy_kwh is None else f"{o.energy_kwh:,.1f}kWh"
        when = f"{o.time_s:>11,.2f}s" if serving else f"{o.time_s / 3600:>11,.1f}h"
        cost = _money(o.cost_usd) + ("/h" if serving and o.cost_usd is not None else "")
        en = en + ("/h" if serving and o.energy_kwh is not None else "")
        lines.append(f"  {o.detail.get('family', ''):<17} {o.hardware:<20} {o.devices:>7} {when} "
                     f"{cost:>14} {en:>12}  {o.layout}")
    if not r.options:
        lines.append("  no option meets the constraints")
    lines.append(f"  Pareto front (time, cost, energy): {len(r.pareto)} options; dropped: "
                 + (", ".join(f"{k} {v}" for k, v in r.dropped.items()) or "none"))
    return _emit(a, r.to_dict(), "\n".join(lines))


def _optimal(a: argparse.Namespace) -> int:
    from hwlm.plan import compute_optimal

    r = compute_optimal(a.flops, hardware=a.hardware, devices=a.devices, hours=a.hours, usd=a.usd, law=a.law)
    text = (f"budget {r.budget_flops:.3g} FLOP ({r.assumptions}): {r.params / 1e9:,.2f}B parameters on "
            f"{r.tokens / 1e9:,.0f}B tokens ({r.tokens_per_param:.1f} tokens/param), predicted loss {r.loss:.3f}\n"
            f"  law: {r.source}")
    return _emit(a, r.to_dict(), text)
