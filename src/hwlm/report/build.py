"""``report(cfg) -> Path``: read runs and bench records, price a job, write one self-contained HTML file.

    >>> report(ReportConfig(runs=[Path("runs/train")], bench=[Path("runs/bench")]))  # doctest: +SKIP
    PosixPath('runs/report.html')

Report is the last stage: it may read every earlier one (train logs, bench records, the
planner). Inputs are checked before any chart is drawn, so a bad path fails in a blink.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hwlm.io import atomic_write_text
from hwlm.report.collect import ReportInputs, collect_inputs
from hwlm.report.config import ReportConfig
from hwlm.report.html import esc, notes, page
from hwlm.report.jobs import price_job
from hwlm.report.sections import (SECTIONS, classify_section, compress_section, energy_section, loss_section,
                                  machine_block, plan_section, roofline_section, throughput_section)

__all__ = ["report", "render_report"]


def _machine(inputs: ReportInputs) -> tuple[dict[str, Any], str, dict[str, str | None]]:
    """Machine facts from the newest bench record that has them, else ``hwlm.hw.detect()`` now."""
    with_machine = sorted((r for r in inputs.records if isinstance(r.record.get("machine"), dict)),
                          key=lambda r: r.created)
    if with_machine:
        rec = with_machine[-1]
        versions = dict(rec.record.get("versions") or {})
        return rec.record["machine"], f"bench record {rec.path.name} ({rec.created})", versions
    from hwlm.hw import detect
    info = detect().to_dict()
    return info, "hwlm.hw.detect() at report time", {"torch": info.get("torch")}


def _versions(recorded: dict[str, str | None]) -> dict[str, str | None]:
    import matplotlib

    from hwlm import __version__
    out = {"hwlm": __version__, "python": platform.python_version(), "matplotlib": matplotlib.__version__}
    for k, v in recorded.items():   # what the measurements ran with, when it differs from now
        if v and out.get(k) != v:
            out[f"{k} (in the bench records)"] = v
    return out


def render_report(cfg: ReportConfig, inputs: ReportInputs, now: datetime | None = None) -> str:
    """The whole HTML page for ``inputs`` and the job in ``cfg``."""
    now = now or datetime.now(timezone.utc)
    model, jobs = price_job(cfg.job_model, cfg.job_tokens, cfg.job_devices, cfg.job_precision)
    machine, source, recorded = _machine(inputs)
    body = [machine_block(machine, source, _versions(recorded)),
            loss_section(inputs), throughput_section(inputs), roofline_section(inputs),
            plan_section(model, jobs, cfg.job_tokens, cfg.job_devices, cfg.job_precision),
            energy_section(inputs, jobs, model.name), classify_section(inputs), compress_section(inputs)]
    given = [f"run {r.path}" for r in inputs.runs] + [f"compressed run {r.path}" for r in inputs.compressed] \
        + [f"bench {r.benchmark} {r.path}" for r in inputs.records]
    body.append('<section id="inputs"><h2>Inputs</h2>' + (notes(given + inputs.notes) or "<p>none</p>")
                + "</section>")
    stamp = now.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    subtitle = (f"generated {esc(stamp)} on {esc(machine.get('hostname', '?'))}; {len(inputs.runs)} run(s), "
                f"{len(inputs.records)} bench record(s)")
    nav = [("machine", "Machine"), *SECTIONS, ("inputs", "Inputs")]
    return page(cfg.title, subtitle, nav, body, f"hwlm report, {esc(stamp)}; one file, no external assets")


def report(cfg: ReportConfig) -> Path:
    """Read the inputs in ``cfg``, render the report and write it atomically to ``cfg.out``."""
    inputs = collect_inputs(cfg.runs, cfg.bench)
    text = render_report(cfg, inputs)
    atomic_write_text(cfg.out, text)
    return cfg.out
