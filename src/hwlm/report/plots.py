"""The report's charts: matplotlib figures rendered with the Agg/SVG back end to inline SVG text.

Figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot`` global state),
so rendering never opens a window and never depends on ``MPLBACKEND``. Text stays text in
the SVG (``svg.fonttype = none``) so it is crisp, searchable and small. Element ids get a
per-figure prefix, because several SVGs share one HTML document and ids must be unique there.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any, Sequence

import numpy as np

from hwlm.report.analysis import EnergyRow, Roof, WorkPoint
from hwlm.report.collect import BenchRecord, RunData
from hwlm.report.jobs import JobRow

__all__ = ["svg_of", "si", "loss_figure", "throughput_figure", "bench_train_figure", "roofline_figure",
           "job_figure", "energy_figure", "classify_figure", "compress_figure", "KIND_COLOURS"]

KIND_COLOURS = {"measured": "#2a9d5c", "estimate": "#e08a1e", "none": "#9a9a9a"}
_PHASE_STYLE = {"train": ("^", "#c0392b"), "prefill": ("o", "#2471a3"), "decode": ("s", "#7d3c98")}
_RC = {"svg.fonttype": "none", "svg.hashsalt": "hwlm-report", "font.size": 10, "axes.titlesize": 11,
       "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
       "font.family": "sans-serif"}


def si(value: float | None, unit: str = "", digits: int = 3) -> str:
    """A number with an SI prefix.

    >>> si(2.85e11, "FLOP/s"), si(0.000195, "J"), si(None)
    ('285 GFLOP/s', '195 µJ', 'n/a')
    """
    if value is None or not math.isfinite(value):
        return "n/a"
    if value == 0:
        return f"0 {unit}".strip()
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""),
                           (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{unit}".strip()
    return f"{value:.{digits}g} {unit}".strip()


def _figure(width: float, height: float, ncols: int = 1, **kw: Any) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False, **kw)[0]
    return fig, list(axes)


def svg_of(fig: Any, prefix: str) -> str:
    """The figure as an ``<svg>`` element for inline use: no XML prolog, no metadata, unique ids."""
    import matplotlib
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "hwlm-report"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    svg = text[text.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', svg)
    head, rest = svg.split(">", 1)   # scale with the page: keep the viewBox, drop the fixed size
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    return f'{head} width="100%" role="img" aria-label="{prefix} chart">{rest}'


def _styled(fn: Any) -> Any:
    """Build the figure under the report's rc settings."""
    def wrapper(*args: Any, **kwargs: Any) -> str:
        import matplotlib
        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)
    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


def _colour(i: int) -> str:
    from matplotlib import colormaps
    return colormaps["tab10"](i % 10)


@_styled
def loss_figure(runs: Sequence[RunData], order: dict[str, int] | None = None) -> str:
    """Train (solid) and validation (dashed, dots) loss per run, against steps and against tokens.

    ``order`` maps run names to colour slots, so a run keeps its colour in every chart.
    """
    fig, (by_step, by_tok) = _figure(11, 4.2, 2, sharey=True)
    for i, run in enumerate(runs):
        c = _colour((order or {}).get(run.name, i))
        steps, toks, loss = run.series("loss")
        vsteps, vtoks, vloss = run.series("val_loss")
        by_step.plot(steps, loss, color=c, lw=1.6, label=f"{run.name} train")
        by_tok.plot(toks, loss, color=c, lw=1.6)
        if vloss:
            by_step.plot(vsteps, vloss, color=c, lw=1.2, ls="--", marker="o", ms=4, label=f"{run.name} val")
            by_tok.plot(vtoks, vloss, color=c, lw=1.2, ls="--", marker="o", ms=4)
    by_step.set(xlabel="optimizer step", ylabel="loss (nats/token)", title="loss vs steps")
    by_tok.set(xlabel="training tokens", title="loss vs tokens")
    by_tok.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    fig.legend(loc="outside lower center", ncol=min(4, 2 * len(runs)), frameon=False)
    return svg_of(fig, "loss")


@_styled
def throughput_figure(runs: Sequence[RunData], order: dict[str, int] | None = None) -> str:
    """Logged tokens/s and MFU per run against steps (colours as in :func:`loss_figure`)."""
    fig, (tps_ax, mfu_ax) = _figure(11, 4.0, 2)
    any_mfu = False
    for i, run in enumerate(runs):
        c = _colour((order or {}).get(run.name, i))
        steps, _, tps = run.series("tokens_per_s")
        tps_ax.plot(steps, tps, color=c, lw=1.4, marker=".", label=run.name)
        msteps, _, mfu = run.series("mfu")
        if mfu:
            any_mfu = True
            mfu_ax.plot(msteps, [100 * m for m in mfu], color=c, lw=1.4, marker=".")
    tps_ax.set(xlabel="optimizer step", ylabel="tokens / s", title="training throughput (log.jsonl)")
    tps_ax.set_ylim(bottom=0)
    mfu_ax.set(xlabel="optimizer step", ylabel="MFU (%)", title="model FLOPs utilization (log.jsonl)")
    if not any_mfu:
        mfu_ax.text(0.5, 0.5, "no MFU logged\n(peak FLOP/s unknown on this device)", ha="center", va="center",
                    transform=mfu_ax.transAxes, color="#777")
    else:
        mfu_ax.set_ylim(bottom=0)
    fig.legend(loc="outside lower center", ncol=min(5, max(1, len(runs))), frameon=False)
    return svg_of(fig, "throughput")


def _bench_label(rec: BenchRecord) -> str:
    c = rec.config
    return f"{c.get('model')} b{c.get('batch')}x{c.get('seq')} {c.get('precision')} on {rec.device}"


@_styled
def bench_train_figure(records: Sequence[BenchRecord]) -> str:
    """Tokens/s and MFU (against the measured matmul peak) of each bench train record."""
    recs = [r for r in records if "tokens_per_s" in r.summary]
    fig, (tps_ax, mfu_ax) = _figure(11, 1.2 + 0.45 * len(recs), 2, sharey=True)
    labels = [_bench_label(r) for r in recs]
    y = list(range(len(recs)))
    tps_ax.barh(y, [r.summary["tokens_per_s"] for r in recs], color="#2471a3")
    mfu = [100 * (r.summary.get("mfu_measured") or 0) for r in recs]
    mfu_ax.barh(y, mfu, color="#c0392b")
    for yi, r, m in zip(y, recs, mfu):
        tps_ax.text(r.summary["tokens_per_s"], yi, f" {si(r.summary['tokens_per_s'])}", va="center", fontsize=9)
        txt = f" {m:.1f}%" if r.summary.get("mfu_measured") is not None else " n/a (no peak)"
        mfu_ax.text(m, yi, txt, va="center", fontsize=9)
    tps_ax.set_yticks(y, labels)
    tps_ax.invert_yaxis()
    tps_ax.set(xlabel="tokens / s", title="hwlm bench train: throughput")
    mfu_ax.set(xlabel="MFU (% of measured matmul peak)", title="hwlm bench train: MFU")
    for ax in (tps_ax, mfu_ax):
        ax.margins(x=0.25)
    return svg_of(fig, "benchtrain")


@_styled
def roofline_figure(roof: Roof, points: Sequence[WorkPoint]) -> str:
    """Measured roofs (one per data type) and the measured workloads, log-log."""
    fig, (ax,) = _figure(10, 6.0)
    bw = roof.bytes_per_s
    peaks = sorted(roof.flops.items(), key=lambda kv: -kv[1])
    ridges = [p / bw for _, p in peaks] if bw else [1.0]
    xs_pts = [p.intensity for p in points]
    x_lo = min(xs_pts + [min(ridges) / 30]) / 3
    x_hi = max(xs_pts + [max(ridges) * 30]) * 3
    # the shared memory slope up to the highest ridge, then one flat roof per data type from its ridge
    if bw:
        top_ridge = max(ridges)
        ax.plot([x_lo, top_ridge], [bw * x_lo, bw * top_ridge], color="black", lw=2.4,
                label=f"memory roof: copy bandwidth {si(bw, 'B/s')}")
    cache = roof.cache_bytes_per_s
    if cache and peaks:
        cache_ridge = max(pk for _, pk in peaks) / cache
        ax.plot([x_lo, cache_ridge], [cache * x_lo, cache * cache_ridge], color="#7b7d7d", lw=1.8, ls="--",
                label=f"cache roof: copy of a cache-sized buffer {si(cache, 'B/s')}")
    roof_colours = ["#1b4f72", "#117a65", "#b9770e", "#6c3483", "#7b7d7d"]
    for i, (dtype, peak) in enumerate(peaks):
        start = peak / bw if bw else x_lo
        ax.plot([start, x_hi], [peak, peak], color=roof_colours[i % len(roof_colours)], lw=2.4, ls=("-", "--", "-.",
                ":")[i % 4], label=f"{dtype} matmul roof {si(peak, 'OP/s' if dtype.startswith('int') else 'FLOP/s')}" + (f" (ridge {start:.3g} FLOP/B)"
                                                                                   if bw else ""))
    for i, p in enumerate(points):
        marker, _ = _PHASE_STYLE.get(p.phase, ("D", "#555"))
        bound, which = roof.attainable(p)
        cached = which not in ("DRAM", "compute")  # above the DRAM roof: its operands live in cache
        ax.scatter([p.intensity], [p.flops_per_s], marker=marker, s=70, color="white" if cached else _colour(i),
                   edgecolor=_colour(i) if cached else "black", linewidth=1.6 if cached else 0.6, zorder=3,
                   label=f"{p.label}: {p.intensity:.3g} FLOP/B, {si(p.flops_per_s, 'FLOP/s')}"
                         + (" (cache-resident, hollow)" if cached else ""))
    ys_pts = [p.flops_per_s for p in points]
    top = max([pk for _, pk in peaks] + ys_pts + ([bw * x_hi] if bw and not peaks else []) + [1.0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(min(ys_pts + [top / 1e3]) / 3, top * 4)
    ax.set(xlabel="arithmetic intensity (FLOPs per byte moved)", ylabel="achieved FLOP/s",
           title=f"roofline of {roof.device} (roofs measured: {roof.source})")
    fig.legend(loc="outside lower center", ncol=2, fontsize=8.5, frameon=False)
    return svg_of(fig, "roofline")


def _days(v: float) -> str:
    return f"{v:,.0f} d" if v >= 100 else f"{v:.3g} d"


def _usd(v: float) -> str:
    return f"${v / 1e6:.3g}M" if v >= 1e6 else f"${v / 1e3:.3g}k" if v >= 1e3 else f"${v:.0f}"


def _kwh(v: float) -> str:
    return f"{v / 1e3:.3g} MWh" if v >= 1e3 else f"{v:.3g} kWh"


def _bar_panel(ax: Any, y: list[int], values: list[float | None], fits: list[bool], fmt: Any, missing: str,
               log: bool = False) -> None:
    """One horizontal bar panel; a device that does not fit is hatched grey, a missing value says why."""
    present = [v for v in values if v]
    left = min(present) / 2 if log and present else 0.0
    vals = [v if v else left for v in values]
    colours = ["#2471a3" if f else "#c8c8c8" for f in fits]
    bars = ax.barh(y, [v - left for v in vals], left=left, color=colours, edgecolor="#555", linewidth=0.4)
    for bar, f in zip(bars, fits):
        if not f:
            bar.set_hatch("///")
    for yi, v in zip(y, values):
        ax.text(v if v else left, yi, f" {fmt(v)}" if v else f" {missing}", va="center", fontsize=8,
                color="#222" if v else "#888")
    if log and present:
        ax.set_xscale("log")
        ax.set_xlim(left, max(present) * 8)
    else:
        ax.set_xlim(0, max(present + [1.0]) * 1.35)


@_styled
def job_figure(rows: Sequence[JobRow], title: str) -> str:
    """Predicted time, cost and energy of the job per device (fastest first); non-fitting hatched."""
    from matplotlib.patches import Patch
    priced = [r for r in rows if r.estimate is not None]
    fig, axes = _figure(12, 1.9 + 0.27 * len(priced), 3, sharey=True)
    y = list(range(len(priced)))
    fits = [r.fits for r in priced]
    est = [r.estimate for r in priced]
    _bar_panel(axes[0], y, [e.time_s / 86400 for e in est], fits, _days, "", log=True)  # type: ignore[union-attr]
    _bar_panel(axes[1], y, [e.cost_usd / 1e3 if e.cost_usd is not None else None for e in est],  # type: ignore
               fits, lambda v: _usd(v * 1e3), "no catalog price")
    _bar_panel(axes[2], y, [e.energy_kwh / 1e3 if e.energy_kwh is not None else None for e in est],  # type: ignore
               fits, lambda v: _kwh(v * 1e3), "no TDP in catalog", log=True)
    axes[0].set_yticks(y, [f"{r.device.id} ({r.precision})" for r in priced], fontsize=8.5)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("wall time (days, log scale)")
    axes[1].set_xlabel("cost (thousand USD at catalog rental price)")
    axes[2].set_xlabel("energy (MWh incl. PUE, log scale)")
    for ax in axes:
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="x", labelsize=8.5)
    fig.suptitle(title, fontsize=11)
    fig.legend(handles=[Patch(facecolor="#2471a3", label="fits in device memory"),
                        Patch(facecolor="#c8c8c8", hatch="///", edgecolor="#555",
                              label="does not fit (needs more devices)")],
               loc="outside lower center", ncol=2, frameon=False)
    return svg_of(fig, "plan")


@_styled
def energy_figure(rows: Sequence[EnergyRow]) -> str:
    """Joules per token, one bar each, coloured by how the figure was obtained (measured vs estimate)."""
    from matplotlib.patches import Patch
    shown = [r for r in rows if r.joules_per_token]
    fig, (ax,) = _figure(10, 1.5 + 0.42 * len(shown))
    y = list(range(len(shown)))
    vals = [float(r.joules_per_token) for r in shown]  # type: ignore[arg-type]
    ax.barh(y, vals, color=[KIND_COLOURS[r.kind] for r in shown], edgecolor="#555", linewidth=0.4)
    for yi, r, v in zip(y, shown, vals):
        ax.text(v, yi, f" {si(v, 'J')} per {r.per} ({r.kind})", va="center", fontsize=8.5)
    ax.set_yticks(y, [r.label for r in shown], fontsize=8.5)
    ax.invert_yaxis()
    if vals and max(vals) / min(vals) > 30:
        ax.set_xscale("log")
        ax.set_xlim(min(vals) / 3, max(vals) * 300)   # room on the right for the labels
    else:
        ax.set_xlim(0, max(vals + [1e-12]) * 1.8)
    ax.set(xlabel="joules per token" + (" (log scale)" if ax.get_xscale() == "log" else ""),
           title="energy per token")
    ax.grid(axis="y", visible=False)
    fig.legend(handles=[Patch(color=KIND_COLOURS["measured"], label="measured (RAPL / NVML counters)"),
                        Patch(color=KIND_COLOURS["estimate"], label="estimate (TDP x utilization, or planner)")],
               loc="outside lower center", ncol=2, frameon=False)
    return svg_of(fig, "energy")


@_styled
def classify_figure(evaluation: dict[str, Any], title: str) -> str:
    """The confusion matrix (rows: true class, columns: predicted; counts and row share) and the F1 per class."""
    labels = list(evaluation["labels"])
    report = evaluation["report"]
    m = np.asarray(report["confusion_matrix"], dtype=float)
    fig, (cm, f1) = _figure(11, max(3.2, 0.45 * len(labels) + 2.0), 2)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    cm.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    cm.grid(False)
    for i in range(len(labels)):
        for j in range(len(labels)):
            cm.text(j, i, f"{int(m[i, j])}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    cm.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true",
           title=f"confusion matrix, {title}")
    cm.set_xticklabels(labels, rotation=45, ha="right")
    cm.set_yticklabels(labels)
    scores = [report[str(name)]["f1-score"] for name in labels]
    f1.barh(range(len(labels)), scores, color=_colour(0))
    f1.axvline(report["macro avg"]["f1-score"], color=_colour(1), ls="--", lw=1.2, label="macro avg")
    f1.set(yticks=range(len(labels)), xlim=(0, 1), xlabel="F1", title="F1 per class")
    f1.set_yticklabels(labels)
    f1.invert_yaxis()
    f1.legend(frameon=False, loc="lower right")
    return svg_of(fig, "classify")


@_styled
def compress_figure(points: Sequence[tuple[str, float, float, bool]], batch: int = 1) -> str:
    """Speed against quality: one point per model, ``(label, perplexity change in %, tokens/s, is original)``.

    The original (float) model is the black star at 0%; up and to the left is better."""
    fig, (ax,) = _figure(9, 5.2)
    for i, (label, delta, tok_s, original) in enumerate(points):
        if original:
            ax.scatter([delta], [tok_s], marker="*", s=260, color="black", zorder=4, label=label if "original" in label else f"{label} (original)")
        else:
            ax.scatter([delta], [tok_s], marker="o", s=80, color=_colour(i), edgecolor="black", linewidth=0.6,
                       zorder=3, label=label)
        ax.annotate(f" {label}", (delta, tok_s), fontsize=8.5, va="center")
    ax.axvline(0.0, color="#777", lw=0.8, ls=":")
    deltas = [p[1] for p in points]
    span = max([abs(d) for d in deltas] + [0.05])
    ax.set_xlim(min(deltas + [0.0]) - 0.3 * span, max(deltas + [0.0]) + 0.6 * span)
    ax.set_ylim(bottom=0, top=max([p[2] for p in points] + [1.0]) * 1.2)
    ax.set(xlabel="perplexity change against the original (%; left is better)",
           ylabel=f"decode tokens / s at batch {batch} (up is faster)",
           title="speed versus quality of each compression (hwlm compress trade-off rows)")
    fig.legend(loc="outside lower center", ncol=min(4, max(1, len(points))), fontsize=8.5, frameon=False)
    return svg_of(fig, "compress")
