"""Reading the report's inputs: training run folders and bench records, strictly.

A run folder must hold ``log.jsonl`` (``hwlm train`` writes it from the first log step);
``config.json`` is read when present (model shape, device, precision, peak FLOP/s). A folder
written by ``hwlm compress`` holds ``compress.json`` instead (what was done and its trade-off
rows), read as a :class:`CompressedRun`. Bench
inputs are record files or folders of them; records are read by
:func:`hwlm.bench.records.load_record`, which rejects other kinds and versions. In a folder,
JSON objects of another kind (a calibration file, `hwlm hw --json` output) are skipped with a note, but a
``hwlm-bench`` file of the wrong version or one that is not JSON is an error: it was meant
to be read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwlm.bench.records import RECORD_KIND, load_record
from hwlm.errors import DataError

__all__ = ["RunData", "BenchRecord", "CompressedRun", "ReportInputs", "load_run", "load_compressed", "load_bench",
           "collect_inputs"]

LOG_FILE = "log.jsonl"
RUN_CONFIG = "config.json"
COMPRESS_RECORD = "compress.json"  # hwlm.compress.run.RECORD_FILE (report reads it without importing torch)


@dataclass
class RunData:
    """One training run: its log lines and (when present) its saved config."""

    path: Path
    name: str
    log: list[dict[str, Any]]
    config: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    # ``hwlm eval`` results of a classifier run (RUN/eval-<split>.json, kind hwlm-classify-eval), by file stem
    classify_evals: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def model(self) -> dict[str, Any] | None:
        return (self.config or {}).get("model")

    @property
    def runtime(self) -> dict[str, Any]:
        return (self.config or {}).get("runtime") or {}

    def series(self, key: str) -> tuple[list[float], list[float], list[float]]:
        """(steps, tokens, values) of the log lines that hold a number under ``key``."""
        rows = [r for r in self.log if isinstance(r.get(key), (int, float))]
        return ([float(r.get("step", 0)) for r in rows], [float(r.get("tokens", 0)) for r in rows],
                [float(r[key]) for r in rows])


@dataclass
class BenchRecord:
    """A bench record and the file it came from."""

    path: Path
    record: dict[str, Any]

    @property
    def benchmark(self) -> str:
        return str(self.record.get("benchmark"))

    @property
    def summary(self) -> dict[str, Any]:
        return self.record.get("summary") or {}

    @property
    def config(self) -> dict[str, Any]:
        return self.record.get("config") or {}

    @property
    def device(self) -> str:
        return str(self.config.get("device") or self.summary.get("device") or "unknown")

    @property
    def created(self) -> str:
        return str(self.record.get("created") or "")


@dataclass
class CompressedRun:
    """A run folder ``hwlm compress`` wrote: its ``compress.json`` (method, precision, trade-off rows)."""

    path: Path
    name: str
    record: dict[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The trade-off rows, the original first (empty when compress ran with --no-table)."""
        return list(self.record.get("table") or [])

    @property
    def source(self) -> str:
        return str((self.record.get("source") or {}).get("checkpoint") or "?")


@dataclass
class ReportInputs:
    """Everything read from disk, grouped by what the report does with it."""

    runs: list[RunData] = field(default_factory=list)
    records: list[BenchRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compressed: list[CompressedRun] = field(default_factory=list)

    def bench(self, benchmark: str) -> list[BenchRecord]:
        """Records of one benchmark (``peak``, ``train``, ``infer``), oldest first."""
        return sorted((r for r in self.records if r.benchmark == benchmark), key=lambda r: r.created)


def _read_log(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse ``log.jsonl``; a torn *last* line (a run writing right now) is skipped with a note."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    for pos, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if pos == len(numbered) - 1:
                notes.append(f"{path}: skipped an incomplete last line {lineno} (the run may still be writing)")
                continue
            raise DataError(f"{path} line {lineno} is not a JSON object; the log is damaged: "
                            f"remove that line or re-run training") from None
        rows.append(row)
    return rows, notes


def load_run(path: str | Path) -> RunData:
    """Read one run folder; a missing folder or one without ``log.jsonl`` is a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"run folder {path} does not exist: pass a folder written by `hwlm train --out`")
    if not path.is_dir():
        raise DataError(f"run {path} is not a folder: pass the run folder (the one holding log.jsonl)")
    if not (path / LOG_FILE).is_file():
        raise DataError(f"{path} has no {LOG_FILE}: it is not a training run folder; pass one written by "
                        f"`hwlm train --out`")
    log, notes = _read_log(path / LOG_FILE)
    if not log:
        notes.append(f"{path / LOG_FILE} has no log lines yet")
    config = None
    if (path / RUN_CONFIG).is_file():
        try:
            config = json.loads((path / RUN_CONFIG).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{path / RUN_CONFIG} is not readable JSON ({exc}); restore it or re-run training"
                            ) from None
        if not isinstance(config, dict):
            raise DataError(f"{path / RUN_CONFIG} is not a JSON object; restore it or re-run training")
    else:
        notes.append(f"{path} has no {RUN_CONFIG}: model shape unknown, so no FLOP figures for this run")
    return RunData(path=path, name=path.resolve().name, log=log, config=config, notes=notes,
                   classify_evals=_classify_evals(path, notes))


def load_compressed(path: str | Path) -> CompressedRun:
    """Read the ``compress.json`` of a compressed run folder; a damaged or foreign one is a DataError."""
    path = Path(path)
    f = path / COMPRESS_RECORD
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{f} is not readable JSON ({exc}); re-run `hwlm compress` into a new folder") from None
    if not isinstance(doc, dict) or doc.get("kind") != "hwlm-compress":
        raise DataError(f"{f} is not an hwlm compress record (kind must be 'hwlm-compress'); re-run `hwlm compress`")
    if doc.get("version") != 1:
        raise DataError(f"{f} has version {doc.get('version')!r}; this hwlm reads version 1")
    table = doc.get("table")
    if table is not None and not (isinstance(table, list) and all(isinstance(r, dict) and "name" in r
                                                                   for r in table)):
        raise DataError(f"{f} has a damaged 'table' (a list of rows with a name is expected); re-run `hwlm compress`")
    return CompressedRun(path=path, name=path.resolve().name, record=doc)


def _classify_evals(path: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    """The classifier evaluations ``hwlm eval`` left in a run folder; an unreadable one is a note."""
    found = {}
    for f in sorted(path.glob("eval-*.json")):
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            notes.append(f"{f} is not readable JSON: skipped")
            continue
        if isinstance(doc, dict) and doc.get("kind") == "hwlm-classify-eval" and doc.get("version") == 1:
            found[f.stem] = doc
        else:
            notes.append(f"{f} is not a version-1 hwlm classifier evaluation: skipped")
    return found


def _kind_of(path: Path) -> tuple[bool, Any]:
    """(is it a JSON object, its ``kind``); a file that is not a JSON object is left to load_record to explain."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False, None
    return (True, data.get("kind")) if isinstance(data, dict) else (False, None)


def load_bench(paths: list[Path]) -> tuple[list[BenchRecord], list[str]]:
    """Records from files and folders (``*.json`` directly inside); returns (records, notes)."""
    records: list[BenchRecord] = []
    notes: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(p.glob("*.json"))
            found = 0
            for f in files:
                is_object, kind = _kind_of(f)
                if is_object and kind != RECORD_KIND:  # `hwlm hw --json`, a calibration file, ...
                    notes.append(f"skipped {f}: a {kind or 'plain JSON'!s} file, not a bench record")
                    continue
                records.append(BenchRecord(f, load_record(f)))
                found += 1
            if not found:
                raise DataError(f"bench folder {p} holds no bench records (*.json): run `hwlm bench peak` "
                                f"(or train/infer) with --out inside it, or pass record files")
        elif p.exists():
            records.append(BenchRecord(p, load_record(p)))
        else:
            raise DataError(f"bench record {p} does not exist: pass a file or folder written by `hwlm bench`")
    return records, notes


def _is_compressed(path: Path) -> bool:
    return path.is_dir() and (path / COMPRESS_RECORD).is_file() and not (path / LOG_FILE).is_file()


def collect_inputs(runs: list[Path], bench: list[Path]) -> ReportInputs:
    """Read every run folder (training or compressed) and bench input; run names are made unique for the legends."""
    compressed = [load_compressed(p) for p in map(Path, runs) if _is_compressed(p)]
    loaded = [load_run(p) for p in map(Path, runs) if not _is_compressed(p)]
    seen: dict[str, int] = {}
    for run in loaded:
        seen[run.name] = seen.get(run.name, 0) + 1
    for run in loaded:
        if seen[run.name] > 1:  # two runs called "run": show parent/run so the legend tells them apart
            run.name = f"{run.path.resolve().parent.name}/{run.name}"
    records, notes = load_bench(bench)
    for run in loaded:
        notes.extend(run.notes)
    return ReportInputs(runs=loaded, records=records, notes=notes, compressed=compressed)
