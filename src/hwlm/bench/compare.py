"""``hwlm bench compare A B``: two bench records side by side.

Every numeric summary metric found in either record gets a row with both values and
the ratio B / A; metrics only one record has are shown with a dash. Records of
different benchmarks may be compared (their shared metrics line up), but the table
says so, because a ratio across benchmarks is rarely what one wants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwlm.bench.records import load_record

__all__ = ["ComparisonRow", "Comparison", "compare_records", "compare_files", "format_comparison"]


@dataclass(frozen=True)
class ComparisonRow:
    metric: str
    a: float | None
    b: float | None

    @property
    def ratio(self) -> float | None:
        return self.b / self.a if self.a not in (None, 0) and self.b is not None else None


@dataclass(frozen=True)
class Comparison:
    a_label: str
    b_label: str
    rows: list[ComparisonRow]
    notes: list[str]


def _numeric(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _label(rec: dict[str, Any], path: str) -> str:
    m = rec.get("machine") or {}
    gpus = m.get("gpus") or []
    hw = gpus[0].get("name") if gpus else (m.get("cpu") or {}).get("model", "?")
    return f"{Path(path).name} ({rec['benchmark']} on {hw})"


def compare_records(a: dict[str, Any], b: dict[str, Any], a_name: str = "A", b_name: str = "B") -> Comparison:
    """Line up the numeric summary metrics of two records."""
    keys = list(a["summary"]) + [k for k in b["summary"] if k not in a["summary"]]
    rows = []
    for k in keys:
        va, vb = _numeric(a["summary"].get(k)), _numeric(b["summary"].get(k))
        if va is not None or vb is not None:
            rows.append(ComparisonRow(k, va, vb))
    notes = []
    if a["benchmark"] != b["benchmark"]:
        notes.append(f"different benchmarks: {a['benchmark']} vs {b['benchmark']}")
    for key in ("model", "precision", "batch", "seq", "size", "compile"):
        ca, cb = a["config"].get(key), b["config"].get(key)
        if ca != cb and (ca is not None or cb is not None):
            notes.append(f"config '{key}' differs: {ca} vs {cb}")
    return Comparison(_label(a, a_name), _label(b, b_name), rows, notes)


def compare_files(path_a: str | Path, path_b: str | Path) -> Comparison:
    """Load two record files (strictly) and compare them."""
    return compare_records(load_record(path_a), load_record(path_b), str(path_a), str(path_b))


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.4g}"
    return f"{v:.4f}".rstrip("0").rstrip(".") if v != int(v) else f"{int(v)}"


def format_comparison(c: Comparison) -> str:
    """A plain-text table: metric, A, B, B/A."""
    width = max([len(r.metric) for r in c.rows] + [6])
    lines = [f"A = {c.a_label}", f"B = {c.b_label}", "",
             f"{'metric':<{width}}  {'A':>12}  {'B':>12}  {'B/A':>7}"]
    for r in c.rows:
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
        lines.append(f"{r.metric:<{width}}  {_fmt(r.a):>12}  {_fmt(r.b):>12}  {ratio:>7}")
    if not c.rows:
        lines.append("(no numeric metrics in common)")
    lines.extend(f"note: {n}" for n in c.notes)
    return "\n".join(lines)
