"""The report's sections, each from the collected inputs to HTML (charts and tables).

A section whose data is absent still appears, saying what is missing and which command
produces it, so a partial report is never mistaken for a complete one.
"""

from __future__ import annotations

from typing import Any

from hwlm.report import plots
from hwlm.report.analysis import (EnergyRow, Roof, WorkPoint, energy_kind, energy_rows, method_text,
                                  roof_from_peak, run_summary, same_device, workload_points)
from hwlm.report.collect import ReportInputs
from hwlm.report.html import esc, figure, missing, notes, section, table
from hwlm.report.jobs import JobRow
from hwlm.report.plots import si

__all__ = ["machine_block", "loss_section", "throughput_section", "roofline_section", "plan_section",
           "energy_section", "classify_section", "compress_section", "SECTIONS"]

# (id, title) in page order; the test checks each id is present.
SECTIONS = (("loss", "Training loss"), ("throughput", "Throughput and MFU"), ("roofline", "Roofline of this device"),
            ("plan", "Predicted job across hardware"), ("energy", "Energy per token"),
            ("classify", "Classification quality"), ("compress", "Compression trade-off"))

TRAIN_CMD = "hwlm train --data runs/data --out runs/train --model tiny --max-steps 200"


def _f(value: Any, fmt: str = ".4g") -> str:
    return "n/a" if value is None else format(value, fmt)


def _tag(kind: str, text: str) -> str:
    return f'<span class="tag {esc(kind)}">{esc(text)}</span>'


def machine_block(machine: dict[str, Any], source: str, versions: dict[str, str | None]) -> str:
    """Machine facts (a record's ``machine`` or ``hwlm.hw.detect()``) and software versions."""
    cpu = machine.get("cpu") or {}
    feats = [k for k, v in (cpu.get("features") or {}).items() if v]
    gpus = machine.get("gpus") or []
    gpu_text = "; ".join(f"{g.get('name')} ({(g.get('memory_bytes') or 0) / 2**30:.0f} GiB, "
                         f"cc {g.get('compute_capability')})" for g in gpus) or "none"
    mem = machine.get("memory_bytes")
    rows = [("host", machine.get("hostname")), ("OS", machine.get("os")),
            ("CPU", f"{cpu.get('model', '?')} ({cpu.get('arch', '?')}), {cpu.get('physical_cores') or '?'} physical / "
                    f"{cpu.get('logical_cores', '?')} logical cores"),
            ("CPU features", ", ".join(feats) or "none detected"),
            ("memory", f"{mem / 2**30:.1f} GiB" if mem else "unknown"), ("GPUs", gpu_text),
            ("device", f"{machine.get('device')}: {machine.get('device_reason', '')}"),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
            ("machine facts from", source)]
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
    return f'<section id="machine"><h2>Machine</h2><dl class="machine">{items}</dl></section>'


def _order(inputs: ReportInputs) -> dict[str, int]:
    return {r.name: i for i, r in enumerate(inputs.runs)}


def loss_section(inputs: ReportInputs) -> str:
    intro = ("Training (solid) and validation (dashed) loss from each run's <code>log.jsonl</code>, "
             "against optimizer steps and against tokens seen.")
    runs = [r for r in inputs.runs if r.series("loss")[2]]
    if not runs:
        what = "No training run with logged loss was given." if not inputs.runs else "The given runs logged no loss yet."
        return section("loss", "Training loss", intro, [missing(what + " Pass run folders with --run.", TRAIN_CMD)])
    rows = [run_summary(r) for r in inputs.runs]
    tab = table(["run", "model", "steps", "tokens", "last train loss", "last val loss"],
                [[s["run"], s["model"], s["steps"], _f(s["tokens"], ","), _f(s["loss"]), _f(s["val_loss"])]
                 for s in rows], numeric=(2, 3, 4, 5))
    return section("loss", "Training loss", intro, [figure(plots.loss_figure(runs, _order(inputs))), tab,
                                                      notes(n for r in inputs.runs for n in r.notes)])


def throughput_section(inputs: ReportInputs) -> str:
    intro = ("Measured training speed: logged tokens/s and MFU of each run (MFU against the peak FLOP/s the run "
             "used, in its <code>config.json</code>), and <code>hwlm bench train</code> records "
             "(MFU against the measured matmul peak).")
    runs = [r for r in inputs.runs if r.series("tokens_per_s")[2]]
    bench = [r for r in inputs.bench("train") if "tokens_per_s" in r.summary]
    parts: list[str] = []
    if runs:
        parts.append(figure(plots.throughput_figure(runs, _order(inputs))))
        parts.append(table(["run", "device", "precision", "median tokens/s", "median MFU", "peak FLOP/s used"],
                           [[s["run"], s["device"], s["precision"], _f(s["tokens_per_s"], ",.0f"),
                             "n/a" if s["mfu"] is None else f"{100 * s['mfu']:.2f}%", si(s["peak_flops"], "FLOP/s")]
                            for s in map(run_summary, runs)], numeric=(3, 4, 5)))
    if bench:
        parts.append(figure(plots.bench_train_figure(bench)))
        parts.append(table(
            ["record", "model / shape", "device", "tokens/s", "step p50 / p90 / p99 (ms)", "MFU (measured peak)",
             "MFU (datasheet)", "peak memory"],
            [[r.path.name, f"{r.config.get('model')} b{r.config.get('batch')}x{r.config.get('seq')} "
              f"{r.config.get('precision')}", r.device, f"{r.summary['tokens_per_s']:,.0f}",
              " / ".join(f"{1e3 * r.summary.get(k, float('nan')):.2f}" for k in ("step_s_p50", "step_s_p90",
                                                                                    "step_s_p99")),
              "n/a" if r.summary.get("mfu_measured") is None else f"{100 * r.summary['mfu_measured']:.2f}%",
              "n/a" if r.summary.get("mfu_datasheet") is None else f"{100 * r.summary['mfu_datasheet']:.2f}%",
              si(r.summary.get("peak_memory_bytes"), "B")] for r in bench], numeric=(3, 4, 5, 6, 7)))
        parts.append(notes(f"{r.path.name}: MFU reference {r.summary.get('mfu_reference')}" for r in bench))
    if not parts:
        parts.append(missing("No throughput data: no run (--run) logged tokens/s and no 'train' bench record "
                             "(--bench) was given.",
                             "hwlm bench train --model tiny --out runs/bench/train.json"))
    return section("throughput", "Throughput and MFU", intro, parts)


def _of_roof(roof: Roof, p: WorkPoint) -> str:
    """Achieved share of the roof that bounds ``p`` (DRAM, or cache when it is cache-resident): at most 100%."""
    bound, which = roof.attainable(p)
    if bound is None:
        return which
    return _pct(p.flops_per_s, bound) + ("" if which in ("DRAM", "compute") else f" of the {which} roof (cache-resident)")


def roofline_section(inputs: ReportInputs) -> str:
    intro = ("Roofs measured by <code>hwlm bench peak</code> (square matmul per data type, one large copy, and a "
             "copy that fits in cache: the roof of work whose operands stay there, marked cache-resident); "
             "each point is a measured workload at its arithmetic intensity (FLOPs from <code>hwlm.formulas</code>, "
             "bytes from the traffic model in <code>hwlm.report.analysis</code>, an estimate) and its achieved "
             "FLOP/s.")
    peaks = [(r, roof_from_peak(r)) for r in inputs.bench("peak")]
    peaks = [(r, roof) for r, roof in peaks if roof is not None]
    if not peaks:
        return section("roofline", "Roofline of this device", intro, [missing(
            "No 'peak' bench record with a matmul or copy figure was given, so the roofs are unknown.",
            "hwlm bench peak --out runs/bench/peak.json   (then pass --bench runs/bench)")])
    rec, roof = peaks[-1]
    points, why = workload_points(inputs)
    here = [p for p in points if same_device(p.device, roof.device)]
    why += [f"{p.label}: measured on {p.device}, the roofs are of {roof.device}; not placed" for p in points
            if p not in here]
    why += [f"{rec.path.name}: not measured: {f}" for f in rec.record.get("findings") or []]
    if len(peaks) > 1:
        why.append(f"{len(peaks)} peak records given; the newest ({rec.path.name}) draws the roofs")
    parts = [figure(plots.roofline_figure(roof, here))]
    if here:
        parts.append(table(["workload", "FLOPs", "bytes moved (est.)", "FLOP/byte", "achieved", "of roof", "source"],
                           [[p.label, si(p.flops, "FLOP"), si(p.bytes, "B"), f"{p.intensity:.3g}",
                             si(p.flops_per_s, "FLOP/s"), _of_roof(roof, p), p.source]
                            for p in here], numeric=(1, 2, 3, 4, 5)))
    else:
        parts.append(missing("No measured workload on this device to place on the roofline.",
                             "hwlm bench train --model tiny; hwlm bench infer --model tiny"))
    parts.append(notes(why))
    return section("roofline", "Roofline of this device", intro, parts)


def _pct(value: float, ref: float | None) -> str:
    return "n/a" if not ref else f"{100 * value / ref:.2g}%"


def plan_section(model: Any, rows: list[JobRow], tokens: float, devices: int, precision: str) -> str:
    p = model.params
    intro = (f"Predicted by <code>hwlm.plan.estimate_training</code> for <b>{esc(model.name)}</b> "
             f"({p.total / 1e9:.2f} B parameters) trained on {tokens:.3g} tokens over {devices} devices of each kind, "
             f"{esc(precision)} where published (else the next of bf16, fp16, fp32), layout chosen by the planner. "
             "These are estimates from efficiency priors and datasheets, not measurements. "
             "Change the job with <code>--job-model --job-tokens --job-devices</code>.")
    title = f"{model.name} on {tokens:.3g} tokens, {devices} devices"
    priced = [r for r in rows if r.estimate is not None]
    parts = [figure(plots.job_figure(rows, title))] if priced else [missing(
        "The planner priced the job on no catalog device.", "hwlm plan hardware")]
    body, classes = [], []
    for r in rows:
        e = r.estimate
        if e is None:
            body.append([r.device.id, r.device.kind, r.precision or "-", "n/a", "", "", "", "", "", "", "",
                         f'<span class="small">{esc(r.problem)}</span>'])
            classes.append("noestimate")
            continue
        needs = (e.smallest_fitting or "").split(" with ")[0]
        fit = "yes" if e.fits else f"no: needs {needs}" if needs else "no: fits on no device count"
        body.append([r.device.id, r.device.kind, r.precision, fit, si(e.memory.total, "B"), f"{e.time_s / 86400:,.2f}",
                     f"{e.device_hours:,.0f}", f"{100 * e.mfu:.1f}%",
                     "n/a" if e.cost_usd is None else f"${e.cost_usd:,.0f}", _f(e.energy_kwh, ",.0f"),
                     _f(e.co2_kg, ",.0f"), f'<span class="small">{esc(e.layout.describe())}</span>'])
        classes.append("" if e.fits else "nofit")
    parts.append(table(["device", "kind", "precision", "fits", "memory / device", "days", "device-hours", "MFU",
                        "cost (USD)", "energy (kWh)", "CO2 (kg)", "layout / note"], body,
                       numeric=(4, 5, 6, 7, 8, 9, 10), row_class=classes, raw=(11,)))
    return section("plan", "Predicted job across hardware", intro, parts)


def energy_section(inputs: ReportInputs, jobs: list[JobRow], job_name: str) -> str:
    intro = ("Energy per token of the measured workloads, each labelled with how it was obtained: "
             "<b>measured</b> (RAPL or NVML energy counters) or <b>estimate</b> (TDP x utilization when no counter "
             "exists), plus the planner's estimate for the priced job on its most frugal devices.")
    rows = energy_rows(inputs)
    fitting = sorted((j for j in jobs if j.fits and j.joules_per_token), key=lambda j: j.joules_per_token or 0)[:5]
    planned = [EnergyRow(label=f"plan {job_name} on {j.device.id}", per="training token",
                         joules_per_token=j.joules_per_token, method="planner", watts=None,
                         detail="TDP x power fraction x PUE (hwlm.plan priors)", source="hwlm.plan") for j in fitting]
    parts: list[str] = []
    if any(r.joules_per_token for r in rows + planned):
        parts.append(figure(plots.energy_figure(rows + planned)))
    if not rows:
        parts.append(missing("No 'train' or 'infer' bench record was given, so no measured energy per token.",
                             "hwlm bench train --model tiny --energy auto"))
    table_rows = [[r.label, si(r.joules_per_token, "J") if r.joules_per_token else "n/a", r.per,
                   _tag(r.kind, method_text(r.method)), si(r.watts, "W"), r.detail, r.source] for r in rows + planned]
    table_rows += _peak_energy_rows(inputs)
    if table_rows:
        parts.append(table(["workload", "energy / token", "per", "source of the figure", "avg power", "how", "record"],
                           table_rows, numeric=(1, 4), raw=(3,)))
    return section("energy", "Energy per token", intro, parts)


def _peak_energy_rows(inputs: ReportInputs) -> list[list[str]]:
    """Matmul energy efficiency from peak records, as J per TFLOP (no tokens here)."""
    out = []
    for rec in inputs.bench("peak"):
        for key, value in rec.summary.items():
            if key.startswith("matmul_") and key.endswith("_flops_per_joule") and value:
                dtype = key[len("matmul_"):-len("_flops_per_joule")]
                method = str(rec.summary.get(f"matmul_{dtype}_energy_method", "none"))
                out.append([f"matmul {dtype} on {rec.device}", si(1e12 / value, "J"), "TFLOP",
                            _tag(energy_kind(method), method_text(method)), "", "bench peak matmul energy",
                            rec.path.name])
    return out


CLASSIFY_CMD = "hwlm eval --run runs/classifier   # writes runs/classifier/eval-test.json"


def classify_section(inputs: ReportInputs) -> str:
    """Confusion matrix and F1 per class of each classifier run that `hwlm eval` has evaluated."""
    intro = ("For each classifier run, what <code>hwlm eval</code> measured (its <code>eval-&lt;split&gt;.json</code>): "
             "the confusion matrix (rows the true class, columns the predicted one; the shade is the row's share) "
             "and the F1 of each class against the macro average, named as scikit-learn's "
             "<code>classification_report</code> names them.")
    parts, rows = [], []
    for run in inputs.runs:
        for stem, ev in run.classify_evals.items():
            rep = ev["report"]
            label = f"{run.name} ({ev.get('source', stem)})"
            parts.append(figure(plots.classify_figure(ev, label)))
            spread = (ev.get("seeds") or {}).get("macro avg f1-score")  # {"mean", "std", ...} of --seeds K runs
            rows.append([esc(label), _f(ev.get("examples"), ","), _f(rep["accuracy"]),
                         _f(rep["macro avg"]["f1-score"]), _f(rep["weighted avg"]["f1-score"]),
                         "n/a" if not isinstance(spread, dict) else f"{_f(spread.get('mean'))} ± {_f(spread.get('std'))}"])
    if not rows:
        return section("classify", "Classification quality", intro,
                       [missing("No evaluated classifier run was given.", CLASSIFY_CMD)])
    tab = table(["run (source)", "examples", "accuracy", "macro F1", "weighted F1", "macro F1 over seeds"], rows,
                numeric=(1, 2, 3, 4))
    return section("classify", "Classification quality", intro, [tab, *parts])


COMPRESS_CMD = "hwlm compress --run runs/train --method int8 --out runs/int8   (then hwlm report --run runs/int8)"


def _batches(rows: list[dict[str, Any]]) -> list[int]:
    found = {int(k[len("tok_s_b"):]) for r in rows for k in r if k.startswith("tok_s_b") and k[7:].isdigit()}
    return sorted(found)


def _compress_rows(inputs: ReportInputs) -> tuple[list[tuple[str, str, dict[str, Any], bool]], list[str]]:
    """(run, source, row, is original) in the given order: each source's original once, then every method."""
    out: list[tuple[str, str, dict[str, Any], bool]] = []
    why: list[str] = []
    originals: dict[str, dict[str, Any]] = {}
    for run in inputs.compressed:
        rows = run.rows
        if not rows:
            why.append(f"{run.name}: compressed with --no-table, so nothing was measured; re-run hwlm compress "
                       "without it")
            continue
        orig, *methods = rows
        if run.source not in originals:
            originals[run.source] = orig
            out.append((run.name, run.source, orig, True))
        else:
            first = originals[run.source].get("tok_s_b1")
            why.append(f"{run.name}: its own timing of the original reads {_f(orig.get('tok_s_b1'), ',.0f')} tokens/s "
                       f"at batch 1 (the row shown: {_f(first, ',.0f')}); the speed-up column uses its own")
        out += [(run.name, run.source, m, False) for m in methods]
        where = run.record.get("measured_on") or {}
        if where:
            why.append(f"{run.name}: timed on {where.get('host', '?')} ({where.get('device', '?')}, "
                       f"{where.get('threads', '?')} threads, load average {where.get('load_avg_1m', '?')})")
    return out, why


def _own_original(inputs: ReportInputs, run_name: str) -> dict[str, Any]:
    return next(r.rows[0] for r in inputs.compressed if r.name == run_name and r.rows)


def compress_section(inputs: ReportInputs) -> str:
    """The trade-off table of every compressed run given, and tokens/s at batch 1 against perplexity change."""
    intro = ("What each <code>hwlm compress</code> method bought and cost, as the command measured it into the "
             "compressed run's <code>compress.json</code>: perplexity and its change and the mean per-token KL "
             "against the original on the same validation windows, size on disk, memory of the weights plus a "
             "full-context KV cache, greedy decode tokens/s at each batch, TTFT of a 16-token prompt, and energy "
             "per token with how it was obtained.")
    shown, why = _compress_rows(inputs)
    if not shown:
        what = ("No compressed run was given." if not inputs.compressed
                else "The compressed runs given hold no trade-off rows.")
        return section("compress", "Compression trade-off", intro,
                       [missing(what + " Pass folders written by `hwlm compress` with --run.", COMPRESS_CMD),
                        notes(why)])
    batches = _batches([r for _, _, r, _ in shown])
    body = []
    for run_name, _, r, original in shown:
        delta = "-" if original or r.get("ppl_delta_pct") is None else f"{r['ppl_delta_pct']:+.2f}%"
        base = _own_original(inputs, run_name).get("tok_s_b1")
        speed = "1 (reference)" if original else (
            "n/a" if not base or r.get("tok_s_b1") is None else f"{r['tok_s_b1'] / base:.2f}x")
        energy = r.get("energy_j_per_token")
        method = str(r.get("energy_source") or "none")
        method = "none" if method.startswith("n/a") else method  # compress ran without a meter
        body.append([r["name"], "original" if original else run_name, _f(r.get("ppl"), ".4g"), delta,
                     _f(r.get("kl"), ".2g"), _f(r.get("size_mb"), ".2f"), _f(r.get("memory_mb"), ".1f"),
                     *[_f(r.get(f"tok_s_b{b}"), ",.0f") for b in batches], _f(r.get("ttft_ms"), ".1f"),
                     f"{si(energy, 'J') if energy else 'n/a'} {_tag(energy_kind(method), method_text(method))}",
                     speed])
    headers = (["model", "run", "perplexity", "vs original", "KL", "disk MB", "memory MB"]
               + [f"tokens/s b{b}" for b in batches] + ["TTFT ms", "energy / token (source)", "b1 speed vs original"])
    n = len(headers)
    tab = table(headers, body, numeric=tuple(range(2, n - 2)) + (n - 1,), raw=(n - 2,))
    points = [(r["name"], 0.0 if original else float(r.get("ppl_delta_pct") or 0.0), float(r["tok_s_b1"]), original)
              for _, _, r, original in shown if r.get("tok_s_b1") is not None]
    parts = [figure(plots.compress_figure(points))] if points else []
    if not points:
        why.append("no row has tokens/s at batch 1 (compress --batches without 1), so no scatter")
    return section("compress", "Compression trade-off", intro, [*parts, tab, notes(why)])
