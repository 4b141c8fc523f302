"""What each compression method buys and costs, measured: decode speed on the GPT-2 124M shape, quality on a trained model.

1. **Speed** (``gpt2-124m`` shape, random weights, seed 0): batch-1 greedy decode, prompt 16, ``--new``
   tokens, ``--threads`` threads, against Hugging Face ``GPT2LMHeadModel.generate`` (fp32, KV cache) on
   the *same* weights in the same run, rounds interleaved, median. Rows: hwlm fp32 (on weights packed
   for oneDNN, as ``hwlm generate`` runs it on a CPU), hwlm fp32 gemv (unpacked), int8 ``w8a8`` /
   ``w8a16``, int4 ``w4a16`` (group 128), eager and (``--compile``) through the compiled fixed-shape
   decode step. Each row also gives the CPU time per token of this process (``time.process_time``):
   on a machine shared with other jobs wall time swings with their load, CPU time much less.
   Batched decode (``--batches``) tokens/s for every row. Peers on the same weights (``--peers``, on by
   default), timed in the same interleaved rounds: torchao's ``Int8DynamicActivationInt8WeightConfig``
   (per-token int8 activations x per-channel int8 weights, the head included, as hwlm's w8a8) inside hwlm's
   compiled decode step, under the inductor settings torchao recommends for it; and ``hwlm export --format
   onnx --quantize int8`` (onnxruntime's dynamic int8 MatMuls) run by onnxruntime with ``--threads``
   threads. A peer whose package is missing is left out with a note.
2. **Quality** (``--quality-run RUN``, default: the ``tiny`` preset trained ``--quality-steps`` steps on
   the quickstart corpus, Python's pydoc topics): ``hwlm compress`` with every method on the same run,
   and the trade-off table it prints (perplexity and KL against the original, size, memory, tokens/s at
   batch 1/8/32, TTFT, energy per token with its source).

3. **Planner loop** (``--plan-loop``): the gpt2-124m shape (vocabulary 50304) trained one step, then every
   format through the commands a user runs: ``hwlm compress --no-table`` (w8a8, w8a16, w4a16) ->
   ``hwlm bench infer --run`` (batch 1, prompt 16, ``--new`` tokens) -> ``hwlm bench calibrate --hardware
   this-machine`` with a ``hwlm bench peak`` record -> ``hwlm plan infer --precision FMT --calibration``.
   The plan is compared with the measured decode tokens/s at the calibrated shape and at another one
   (prompt 256), measured apart and not used to calibrate. Target (issue 9): within 20%.

Results go to docs/benchmarks.md between the ``compress_speed`` (and ``compress_plan``) markers
(``--write-docs``) and to ``runs/bench/compress_speed.json``. Run it alone:
``flock /tmp/hwlm-bench.lock python benchmarks/compress_speed.py``.

    python benchmarks/compress_speed.py --threads 2 --new 32 --compile --write-docs
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate_speed import copy_bandwidth, hf_twin  # noqa: E402  (benchmarks/ is a folder of scripts)
from train_speed import cpu_model  # noqa: E402

from hwlm.compress import CompressConfig, compress, quantize_model, render_table  # noqa: E402
from hwlm.compress.table import _decode, model_bytes  # noqa: E402
from hwlm.model import ModelConfig, Transformer, generate  # noqa: E402
from hwlm.model.packing import pack_linears  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- compress_speed:start -->", "<!-- compress_speed:end -->"
PLAN_START, PLAN_END = "<!-- compress_plan:start -->", "<!-- compress_plan:end -->"
FORMATS = ("fp32", "w8a8", "w8a16", "w4a16")


def _timed(fn: Callable[[], list[int]]) -> tuple[float, float, list[int]]:
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def int8_peers(base: torch.nn.Module, prompt: list[int], new: int, threads: int,
               tmp: Path) -> tuple[dict[str, Callable[[], list[int]]], dict[str, float], list[str]]:
    """torchao int8 dynamic (compiled) and onnxruntime int8 on ``base``'s weights: (generate fns, weight MB, notes)."""
    fns: dict[str, Callable[[], list[int]]] = {}
    mb: dict[str, float] = {}
    notes: list[str] = []
    try:
        import torchao
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        from torchao.quantization.utils import recommended_inductor_config_setter
    except ImportError as exc:
        notes.append(f"torchao peer left out: {exc}")
    else:
        from hwlm.model.quantized import use_module_decode

        q = copy.deepcopy(base)
        quantize_(q, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))  # every Linear, head too
        use_module_decode(q)  # its Linears are tensor subclasses: decode through the modules
        # The inductor settings torchao's config sets process-wide by default, applied to this peer only.
        before = torch._inductor.config.get_config_copy()
        recommended_inductor_config_setter()
        after = torch._inductor.config.get_config_copy()
        ao_settings = {k: v for k, v in after.items() if before[k] != v}
        for key in ao_settings:  # restored: hwlm's forms compile with the defaults
            *parents, attr = key.split(".")
            setattr(functools.reduce(getattr, parents, torch._inductor.config), attr, before[key])

        def ao_fn(m: torch.nn.Module = q) -> list[int]:
            with torch._inductor.config.patch(ao_settings):
                return list(generate(m, prompt, new, temperature=0, compile=True))

        name = f"torchao {torchao.__version__} int8 dynamic compiled"
        fns[name] = ao_fn
        mb[name] = sum(t.numel() * t.element_size() for v in q.state_dict().values() for t in _inner_tensors(v)) / 1e6
    try:
        from hwlm.export.onnx import OnnxModel, export_onnx
        import onnxruntime

        path = export_onnx(base, tmp / "onnx-int8", quantize="int8")
        om = OnnxModel.load(path, threads=threads)
        name = f"onnxruntime {onnxruntime.__version__} int8"
        fns[name] = lambda om=om: list(om.generate(prompt, new, temperature=0))
        mb[name] = om.path.stat().st_size / 1e6
    except ImportError as exc:
        notes.append(f"onnxruntime peer left out: {exc}")
    return fns, mb, notes


def _inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors a (torchao) tensor subclass holds, or the tensor itself."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return [x for n in names for x in _inner_tensors(getattr(t, n))]
    return [t]


def speed(threads: int, new: int, rounds: int, use_compile: bool, batches: list[int],
          peers: bool = True, precisions: tuple[str, ...] = FORMATS[1:]) -> dict[str, Any]:
    """Batch-1 decode tokens/s of every form of one random gpt2-124m, and of HF and the peers on the same weights."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = Transformer(ModelConfig.from_name("gpt2-124m")).eval()
    hf = hf_twin(base)
    prompt = list(range(16))
    packed = copy.deepcopy(base)  # what hwlm generate runs on a CPU: weights packed for oneDNN
    pack_linears(packed)
    forms: dict[str, tuple[torch.nn.Module, bool]] = {"hwlm fp32": (packed, False), "hwlm fp32 gemv": (base, False)}
    if use_compile:
        forms["hwlm fp32 compiled"] = (base, True)  # the Linears as fused row reductions (decoding.row_linear)
    for precision in precisions:
        q = quantize_model(copy.deepcopy(base), precision, 128)
        forms[f"{precision} eager"] = (q, False)
        if use_compile:
            forms[f"{precision} compiled"] = (q, True)

    def hf_fn() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              use_cache=True, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    fns: dict[str, Callable[[], list[int]]] = {"HF fp32": hf_fn}
    for name, (model, comp) in forms.items():
        fns[name] = (lambda m=model, c=comp: list(generate(m, prompt, new, temperature=0, compile=c)))
    peer_mb: dict[str, float] = {}
    notes: list[str] = []
    if peers:
        tmp = Path(tempfile.mkdtemp(prefix="compress-speed-"))
        peer_fns, peer_mb, notes = int8_peers(base, prompt, new, threads, tmp)
        fns.update(peer_fns)
        for note in notes:
            print(note, flush=True)
    first: dict[str, list[int]] = {}
    compile_s: dict[str, float] = {}
    for name, fn in fns.items():  # warm-up (and compilation), and the tokens each form emits
        wall, _, first[name] = _timed(fn)
        compile_s[name] = wall
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            wall, cpu, _ = _timed(fn)
            runs[name].append((wall, cpu))
    rows = []
    hf_tps = new / statistics.median(w for w, _ in runs["HF fp32"])
    for name, samples in runs.items():
        tps = new / statistics.median(w for w, _ in samples)
        row = {"form": name, "tok_s": tps, "vs_hf": tps / hf_tps,
               "cpu_ms_per_token": 1e3 * statistics.median(c for _, c in samples) / new,
               "same_tokens_as_fp32": first[name] == first["hwlm fp32"], "first_call_s": compile_s[name]}
        if name in peer_mb:
            row["weight_mb"] = peer_mb[name]
        if name in forms:
            model = forms[name][0]
            row["weight_mb"] = model_bytes(model) / 1e6
            if not forms[name][1]:
                for b in batches:
                    row[f"tok_s_b{b}"] = b / _decode(model, b, 8, 16)[1]
        rows.append(row)
    if peers:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"threads": threads, "new_tokens": new, "rounds": rounds, "rows": rows, "notes": notes,
            "copy_bandwidth_gb_s": copy_bandwidth() / 1e9}


def quality_run(out: Path, steps: int) -> Path:
    """A ``tiny`` run trained on the quickstart corpus (prepared and trained once, then reused)."""
    from hwlm.quickstart import QuickstartConfig, prepare_corpus
    from hwlm.train import train
    from hwlm.train.config import TrainConfig

    run = out / f"tiny-{steps}"
    if (run / "checkpoints").is_dir():
        return run
    data, _ = prepare_corpus(QuickstartConfig(out=out))
    train(TrainConfig(data=data, out=run, model="tiny", batch_size=16, max_steps=steps, lr=3e-3, min_lr=3e-4,
                      warmup=20, eval_interval=0, ckpt_interval=0, precision="fp32", device="cpu",
                      progress=False, tensorboard=False, peak_flops=1e9))
    return run


METHODS = [("int8 w8a8", dict(method="int8", precision="w8a8")),
           ("int8 w8a16", dict(method="int8", precision="w8a16")),
           ("int4 g32", dict(method="int4", group_size=32)),
           ("int4 g128", dict(method="int4", group_size=128)),
           ("prune 50%", dict(method="prune", sparsity=0.5)),
           ("prune 2:4", dict(method="prune", pattern="2:4")),
           ("prune 2:4, no fine-tune", dict(method="prune", pattern="2:4", finetune_fraction=0.0)),
           ("distill -> debug", dict(method="distill", model="debug", steps=100))]


def quality(run: Path, work: Path, batches: list[int]) -> dict[str, Any]:
    from hwlm.bench.energy import EnergyMeter

    rows, records = [], {}
    for label, kw in METHODS:
        out = work / label.replace(" ", "_").replace(":", "").replace("%", "").replace(">", "")
        shutil.rmtree(out, ignore_errors=True)
        result = compress(CompressConfig(run=run, out=out, batches=batches, decode_steps=16, eval_batches=16, **kw),
                          energy_meter=EnergyMeter)
        if not rows:
            rows.append(result.rows[0])
        row = dict(result.rows[1], name=label)
        rows.append(row)
        records[label] = {k: result.record.get(k) for k in ("precision_choice", "prune", "distill", "notes")}
    return {"run": str(run), "rows": rows, "records": records, "table": render_table(rows, batches)}


def _hwlm(args: list[str]) -> str:
    """Run one hwlm command in this process (its stdout returned); a failure stops the benchmark."""
    import io
    from contextlib import redirect_stdout

    from hwlm.cli import main as hwlm_main

    out = io.StringIO()
    with redirect_stdout(out):
        if hwlm_main(args) != 0:
            raise SystemExit(f"hwlm {' '.join(args)} failed")
    return out.getvalue()


def plan_loop(work: Path, threads: int, new: int, repeats: int = 3) -> dict[str, Any]:
    """compress -> bench infer --run -> bench calibrate -> plan infer, per format, on the gpt2-124m shape."""
    from hwlm.bench.records import load_record
    from hwlm.quickstart import QuickstartConfig, prepare_corpus

    torch.set_num_threads(threads)
    loop = work / "plan-loop"
    shutil.rmtree(loop, ignore_errors=True)
    loop.mkdir(parents=True)
    data, _ = prepare_corpus(QuickstartConfig(out=work))
    runs = {"fp32": loop / "fp32"}
    _hwlm(["train", "--data", str(data), "--out", str(runs["fp32"]), "--model", "gpt2-124m", "--model-vocab-size",
           "50304", "--max-steps", "1", "--batch-size", "1", "--eval-interval", "0", "--device", "cpu",
           "--precision", "fp32", "--no-progress", "--no-tensorboard"])
    for fmt in FORMATS[1:]:
        runs[fmt] = loop / fmt
        _hwlm(["compress", "--run", str(runs["fp32"]), "--method", fmt, "--out", str(runs[fmt]), "--no-table",
               "--data", str(data)])
    peak = loop / "peak.json"
    _hwlm(["bench", "peak", "--device", "cpu", "--dtypes", "fp32,bf16", "--energy", "off", "--out", str(peak)])
    shapes = {"calibrated": 16, "other": 256}
    records: dict[str, dict[str, Path]] = {k: {} for k in shapes}
    for i in range(2):  # the shapes alternate twice; the faster record of each is kept (load only slows runs)
        for shape, prompt in shapes.items():
            for fmt, run in runs.items():
                path = loop / f"infer-{fmt}-p{prompt}-{i}.json"
                _hwlm(["bench", "infer", "--run", str(run), "--device", "cpu", "--energy", "off", "--batch-sizes",
                       "1", "--prompt-lens", str(prompt), "--new-tokens", str(new), "--repeats", str(repeats),
                       "--out", str(path)])
                best = records[shape].get(fmt)
                key = f"b1_p{prompt}_decode_tokens_per_s"
                if best is None or load_record(path)["summary"][key] > load_record(best)["summary"][key]:
                    records[shape][fmt] = path
    cal = loop / "calibration.json"
    _hwlm(["bench", "calibrate", str(peak), *map(str, records["calibrated"].values()), "--hardware",
           "this-machine", "--out", str(cal)])
    hf = loop / "hf"
    _hwlm(["export", "--run", str(runs["fp32"]), "--format", "hf", "--out", str(hf)])
    rows = []
    for fmt in FORMATS:
        row: dict[str, Any] = {"format": fmt}
        for shape, prompt in shapes.items():
            measured = load_record(records[shape][fmt])["summary"][f"b1_p{prompt}_decode_tokens_per_s"]
            plan = json.loads(_hwlm(["plan", "infer", "--model", str(hf / "config.json"), "--precision", fmt,
                                     "--hardware", "this-machine", "--calibration", str(cal), "--batch", "1",
                                     "--prompt-len", str(prompt), "--gen-len", str(new), "--json"]))
            row[shape] = {"prompt": prompt, "measured": measured, "planned": plan["decode_tokens_per_s"],
                          "error": plan["decode_tokens_per_s"] / measured - 1}
        rows.append(row)
    doc = json.loads(cal.read_text())
    eff = {e["dtype"]: e["efficiency"] for e in doc["entries"] if e["phase"] == "decode"}
    return {"threads": threads, "new_tokens": new, "rows": rows, "decode_efficiency": eff,
            "membw_gb_s": next(e["measured"] for e in doc["entries"] if e["phase"] == "membw") / 1e9}


def _plan_table(res: dict[str, Any]) -> str:
    head = ["format", "decode efficiency (of copy bw)", "measured tok/s, prompt 16", "planned", "error",
            "measured tok/s, prompt 256", "planned", "error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        cells = [r["format"], f"{res['decode_efficiency'].get(r['format'], float('nan')):.3f}"]
        for shape in ("calibrated", "other"):
            c = r[shape]
            cells += [f"{c['measured']:.1f}", f"{c['planned']:.1f}", f"{c['error']:+.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _speed_table(res: dict[str, Any], batches: list[int]) -> str:
    head = ["form", "generate tok/s", "vs HF", "CPU ms/token", "weights MB"] + [f"step tok/s b{b}" for b in batches] + [
        "same tokens as fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        cells = [r["form"], f"{r['tok_s']:.1f}", f"{r['vs_hf']:.2f}x", f"{r['cpu_ms_per_token']:.1f}",
                 f"{r['weight_mb']:.0f}" if "weight_mb" in r else "-"]
        cells += [f"{r[f'tok_s_b{b}']:,.0f}" if f"tok_s_b{b}" in r else "-" for b in batches]
        cells.append("yes" if r["same_tokens_as_fp32"] else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="2", help="comma list of thread counts, e.g. 1,2")
    p.add_argument("--new", type=int, default=32, help="new tokens per batch-1 generation")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time the compiled decode step (slow to compile)")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--precisions", default=",".join(FORMATS[1:]), help="comma list of the hwlm formats to time")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="also time torchao int8 dynamic (compiled) and onnxruntime int8 on the same weights")
    p.add_argument("--quality-run", type=Path, default=None)
    p.add_argument("--quality-steps", type=int, default=300)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--plan-loop", action="store_true", help="also run the planner loop (section 3)")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    work = ROOT / "runs" / "bench" / "compress"
    load_before = os.getloadavg()
    result: dict[str, Any] = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                                          "torch": torch.__version__}, "load_before": load_before}
    if not args.skip_speed:
        precisions = tuple(args.precisions.split(","))
        bad = set(precisions) - set(FORMATS[1:])
        if bad:
            p.error(f"unknown --precisions {', '.join(sorted(bad))}; choose from {', '.join(FORMATS[1:])}")
        result["speed"] = [speed(int(t), args.new, args.rounds, args.compile, batches, args.peers, precisions)
                           for t in args.threads.split(",")]
        for s in result["speed"]:
            print(f"{s['threads']} thread(s)\n" + _speed_table(s, batches), flush=True)
    saved = ROOT / "runs" / "bench" / "compress_quality.json"
    if not args.skip_quality:
        torch.set_num_threads(int(args.threads.split(",")[-1]))
        run = args.quality_run or quality_run(work, args.quality_steps)
        result["quality"] = quality(run, work, batches)
        result["quality"]["load"] = [load_before[0], os.getloadavg()[0]]
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(result["quality"], indent=2))
        print(result["quality"]["table"], flush=True)
    elif saved.is_file():  # the table of an earlier --skip-speed run, so the docs keep both halves
        result["quality"] = json.loads(saved.read_text())
    if args.plan_loop:
        load = os.getloadavg()[0]
        result["plan_loop"] = plan_loop(work, int(args.threads.split(",")[-1]), args.new)
        result["plan_loop"]["load"] = [load, os.getloadavg()[0]]
        print(_plan_table(result["plan_loop"]), flush=True)
    result["load_after"] = os.getloadavg()
    (ROOT / "runs" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "runs" / "bench" / "compress_speed.json").write_text(json.dumps(result, indent=2))
    print(f"load average before {load_before[0]:.2f}, after {result['load_after'][0]:.2f}")
    if args.write_docs:
        write_docs(result, batches, args)


def write_docs(result: dict[str, Any], batches: list[int], args: argparse.Namespace) -> None:
    m = result["machine"]
    parts = [START, "", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; load average "
             f"{result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after (2 cores: a load above 2 "
             "means other jobs shared them).", ""]
    for s in result.get("speed", []):
        parts += [f"`python benchmarks/compress_speed.py {' '.join(sys.argv[1:])}`: gpt2-124m shape, batch-1 greedy, "
                  f"{s['threads']} threads, median of {s['rounds']} interleaved rounds; copy bandwidth "
                  f"{s['copy_bandwidth_gb_s']:.1f} GB/s.", "", _speed_table(s, batches), ""]
        parts += [f"{note}." for note in s.get("notes", [])] + ([""] if s.get("notes") else [])
    if "quality" in result:
        q = result["quality"]
        load = " before, ".join(f"{v:.2f}" for v in q.get("load", [])) or "?"
        run = Path(q["run"]).resolve()
        run_name = run.relative_to(ROOT) if run.is_relative_to(ROOT) else run
        parts += [f"Trade-off table (`hwlm compress` on {run_name}: the `tiny` preset trained {args.quality_steps} "
                  f"steps on the quickstart corpus; {args.threads.split(',')[-1]} threads; load average "
                  f"{load} after):", "",
                  render_table(q["rows"], batches), ""]
    parts.append(END)
    text = DOCS.read_text(encoding="utf-8")
    if result.get("speed") or not args.skip_quality:  # a --plan-loop alone leaves the other block as it is
        text = _put(text, START, END, "\n".join(parts), "## Compression (hwlm compress)")
    if "plan_loop" in result:
        pl = result["plan_loop"]
        block = [PLAN_START, "", f"`python benchmarks/compress_speed.py {' '.join(sys.argv[1:])}`: the gpt2-124m "
                 "shape through compress -> "
                 f"bench infer --run -> bench calibrate -> plan infer, batch 1, {pl['threads']} threads; "
                 f"{m['cpu']}, copy bandwidth {pl['membw_gb_s']:.1f} GB/s (bench peak); load average "
                 f"{pl['load'][0]:.2f} before, {pl['load'][1]:.2f} after. Prompt 16 is the calibrated shape; "
                 "prompt 256 was measured apart and not used to calibrate.", "", _plan_table(pl), "", PLAN_END]
        text = _put(text, PLAN_START, PLAN_END, "\n".join(block), "## Planner on compressed runs (this machine)")
    DOCS.write_text(text, encoding="utf-8")


def _put(text: str, start: str, end: str, block: str, heading: str) -> str:
    """``text`` with the block between ``start`` and ``end`` replaced, or appended under ``heading``."""
    if start in text:
        return text[:text.index(start)] + block + text[text.index(end) + len(end):]
    return text.rstrip("\n") + f"\n\n{heading}\n\n" + block + "\n"


if __name__ == "__main__":
    main()
