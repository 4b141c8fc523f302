"""Bench records: one versioned JSON file per run, written atomically, read strictly.

    {"version": 1, "kind": "hwlm-bench", "benchmark": "peak", "created": "2025-...Z",
     "machine": detect().to_dict(), "versions": {"hwlm", "torch", "python"},
     "config": {...}, "samples": [...], "summary": {"metric": number, ...},
     "findings": ["what could not be measured, and why", ...]}

``summary`` holds flat metrics (numbers, or strings such as an energy method) that
``hwlm bench compare`` and ``hwlm bench calibrate`` read; ``samples`` holds the raw
timings behind them. ``findings`` (an addition to the architecture contract) lists
what was skipped or failed, e.g. an out-of-memory size, so a record never hides it.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from hwlm.errors import DataError
from hwlm.io import atomic_write_json

__all__ = ["RECORD_VERSION", "RECORD_KIND", "spread", "make_record", "default_out", "write_record", "load_record"]

RECORD_VERSION = 1
RECORD_KIND = "hwlm-bench"


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of already sorted values."""
    pos = (len(sorted_vals) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def spread(values: Sequence[float]) -> dict[str, float | int]:
    """count, median, mean, min, max, p25, p75, iqr, p90, p99 of ``values``.

    >>> spread([1.0, 2.0, 3.0, 4.0])["iqr"]
    1.5
    """
    if not values:
        raise ValueError("spread() of no values")
    s = sorted(float(v) for v in values)
    p25, p75 = _quantile(s, 0.25), _quantile(s, 0.75)
    return {"count": len(s), "median": statistics.median(s), "mean": statistics.fmean(s), "min": s[0],
            "max": s[-1], "p25": p25, "p75": p75, "iqr": p75 - p25, "p90": _quantile(s, 0.90),
            "p99": _quantile(s, 0.99)}


def _versions() -> dict[str, str | None]:
    from hwlm import __version__
    try:
        import torch
        tv: str | None = torch.__version__
    except ImportError:
        tv = None
    return {"hwlm": __version__, "torch": tv, "python": platform.python_version()}


def make_record(benchmark: str, config: dict[str, Any], samples: list[dict[str, Any]], summary: dict[str, Any],
                findings: list[str] | None = None, machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a record; ``machine`` defaults to ``hwlm.hw.detect().to_dict()``."""
    if machine is None:
        from hwlm.hw import detect
        machine = detect().to_dict()
    return {"version": RECORD_VERSION, "kind": RECORD_KIND, "benchmark": benchmark,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine, "versions": _versions(), "config": config, "samples": samples,
            "summary": summary, "findings": list(findings or [])}


def default_out(benchmark: str, folder: str | Path = "runs/bench") -> Path:
    """``runs/bench/<benchmark>-<UTC timestamp>.json``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(folder) / f"{benchmark}-{stamp}.json"


def write_record(record: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write ``record`` atomically to ``out`` (default :func:`default_out`); returns the path."""
    path = Path(out) if out is not None else default_out(record["benchmark"])
    atomic_write_json(path, record)
    return path


def load_record(path: str | Path) -> dict[str, Any]:
    """Read a bench record; anything else (missing, not JSON, another kind or version) is a DataError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"bench record {path} does not exist: check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read bench record {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"bench record {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("kind") != RECORD_KIND:
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path} is not a hwlm bench record (kind {kind!r}); give a file written by 'hwlm bench'")
    if data.get("version") != RECORD_VERSION:
        raise DataError(f"bench record {path} has version {data.get('version')!r}; this hwlm reads version "
                        f"{RECORD_VERSION}: re-run the benchmark with this hwlm")
    for key in ("benchmark", "summary", "config"):
        if key not in data:
            raise DataError(f"bench record {path} lacks '{key}': it is incomplete; re-run the benchmark")
    return data
