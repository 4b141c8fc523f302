"""Pricing one training job on every catalog device with the planner.

Each device gets :func:`hwlm.plan.training.estimate_training` at the job's precision; a device
without a published peak for it falls back to the next of bf16, fp16, fp32 (a V100 trains in
fp16, a CPU in fp32), and the row says which precision it used. A device the planner cannot
price at all keeps a row with the reason, so the table never silently drops hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwlm.errors import PlanError
from hwlm.plan.catalog import Device, list_devices
from hwlm.plan.models import Model, get_model
from hwlm.plan.training import TRAIN_PRECISIONS, TrainingEstimate, estimate_training

__all__ = ["JobRow", "price_job", "FALLBACK_PRECISIONS"]

FALLBACK_PRECISIONS = ("bf16", "fp16", "fp32")


@dataclass
class JobRow:
    """One catalog device: the estimate, or why there is none."""

    device: Device
    precision: str | None
    estimate: TrainingEstimate | None
    problem: str | None = None

    @property
    def fits(self) -> bool:
        return self.estimate is not None and self.estimate.fits

    @property
    def joules_per_token(self) -> float | None:
        e = self.estimate
        if e is None or e.energy_kwh is None:
            return None
        return e.energy_kwh * 3.6e6 / e.tokens


def _precisions(dev: Device, wanted: str) -> list[str]:
    """The precisions to try on ``dev``, the wanted one first, keeping only those it publishes."""
    order = [wanted] + [p for p in FALLBACK_PRECISIONS if p != wanted]
    return [p for p in order if p in dev.flops]


def price_job(model: str, tokens: float, devices: int, precision: str = "bf16") -> tuple[Model, list[JobRow]]:
    """Estimate the job on every catalog device; an unknown model or precision is a PlanError.

    Rows come back fastest first, then the devices without an estimate.
    """
    m = get_model(model)
    if precision not in TRAIN_PRECISIONS:
        raise PlanError(f"report --job-precision {precision!r} is not a training precision; "
                        f"choose one of {', '.join(TRAIN_PRECISIONS)}")
    rows: list[JobRow] = []
    for dev in list_devices():
        tries = _precisions(dev, precision)
        if not tries:
            wanted = "/".join(dict.fromkeys([precision, *FALLBACK_PRECISIONS]))
            rows.append(JobRow(dev, None, None, f"no published {wanted} peak (has {', '.join(dev.dtypes) or 'none'})"))
            continue
        try:
            est = estimate_training(m, tokens, dev, devices, precision=tries[0])
        except PlanError as exc:
            rows.append(JobRow(dev, tries[0], None, str(exc)))
            continue
        rows.append(JobRow(dev, tries[0], est))
    priced = sorted((r for r in rows if r.estimate), key=lambda r: r.estimate.time_s)  # type: ignore[union-attr]
    return m, priced + [r for r in rows if not r.estimate]
