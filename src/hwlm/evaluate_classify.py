"""Evaluate and use classifiers: ``evaluate_classifier`` (metrics) and ``predict_file`` (labels + probabilities).

    >>> from hwlm.evaluate_classify import evaluate_classifier
    >>> r = evaluate_classifier("runs/lstm")  # doctest: +SKIP
    >>> r.report["macro avg"]["f1-score"], r.report["confusion_matrix"]  # doctest: +SKIP

Metrics (:mod:`hwlm.train.metrics`, re-exported here) are named as scikit-learn's
``classification_report`` names them: per class ``precision``, ``recall``, ``f1-score``, ``support``;
``accuracy``; ``micro avg``, ``macro avg``, ``weighted avg``; plus the confusion matrix (rows: true
class, columns: predicted). A run trained with ``--seeds K`` is evaluated seed by seed, with the mean,
standard deviation, minimum and maximum over the K seeds (``seeds``).

The split is the run's own data folder's (``test`` by default), or labelled CSV / JSON Lines
``files``, normalized as the run's data was; a label the run never trained on is a one-line error.
The result is also written to ``RUN/eval-<source>.json`` (atomically), where ``hwlm report`` can read it.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from hwlm.data.readers import json_lines
from hwlm.errors import ConfigError, DataError
from hwlm.io import atomic_write_json, atomic_write_text
from hwlm.train.metrics import classification_report, confusion_matrix, macro_f1, summarize_seeds

__all__ = ["ClassifyEvalResult", "evaluate_classifier", "predict_file", "PredictResult", "classification_report",
           "confusion_matrix", "macro_f1", "summarize_seeds"]


@dataclass
class ClassifyEvalResult:
    """One run's (or the first seed's) report, and for --seeds runs every seed's report and the spread."""

    run: str
    step: int
    source: str
    examples: int
    labels: list[str]
    report: dict[str, Any]
    seeds: dict[str, Any] | None = None
    per_seed: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device(device: str) -> str:
    from hwlm.device import select_device

    return select_device(device).device


def _rows_of(loaded: Any, texts: list[Any]) -> list[Any]:
    """Model inputs: token ids cut to the run's max_len (the bag of words: their features), feature rows as is."""
    from hwlm.train.classify import encode_rows

    if loaded.tokenizer is None:
        return texts
    return encode_rows(loaded.tokenizer, texts, loaded.spec)


def _labelled(loaded: Any, run: Path, split: str, files: Sequence[str], text_field: str,
              label_field: str, key: bytes | None = None) -> tuple[list[Any], list[int], str]:
    from hwlm.data.classify import read_labelled, read_split

    if not files:
        data_dir = Path(loaded.run_config["data"]["dir"])
        xs, ys = read_split(data_dir, split, key=key)
        return xs, ys, f"{split} split of {data_dir}"
    if loaded.tokenizer is None:
        raise ConfigError("this classifier reads feature rows; evaluate it on its prepared split, not on FILES")
    prep = loaded.run_config["data"].get("prepare", {})
    rows = read_labelled(list(files), text_field, label_field, prep.get("normalize", "nfkc"),
                         prep.get("strip_control", True))
    ids = {name: i for i, name in enumerate(loaded.labels)}
    unknown = sorted({label for _, label in rows if label not in ids})
    if unknown:
        raise DataError(f"label(s) {', '.join(repr(u) for u in unknown[:5])} are absent from the training split of "
                        f"{run} (it knows {', '.join(loaded.labels)}): drop those rows or retrain with them")
    return [t for t, _ in rows], [ids[label] for _, label in rows], ", ".join(files)


def _evaluate_one(run: Path, split: str, files: Sequence[str], text_field: str, label_field: str, device: str,
                  batch_size: int, key: bytes | None = None) -> ClassifyEvalResult:
    from hwlm.train.classify import predict_batches
    from hwlm.train.classify_load import load_classifier

    loaded = load_classifier(run, device, key)
    xs, ys, source = _labelled(loaded, run, split, files, text_field, label_field, key)
    if not ys:
        raise DataError(f"the {source} holds no examples to evaluate on")
    probs = predict_batches(loaded.model, _rows_of(loaded, xs), loaded.spec.get("pad_id") or 0,
                            loaded.tokenizer is None, device, batch_size)
    report = classification_report(ys, probs.argmax(-1).tolist(), loaded.labels)
    return ClassifyEvalResult(run=str(run), step=loaded.step, source=source, examples=len(ys), labels=loaded.labels,
                              report=report)


def evaluate_classifier(run: str | Path, split: str = "test", files: Sequence[str] = (), text_field: str = "text",
                        label_field: str = "label", device: str = "auto", batch_size: int = 256,
                        write: bool = True, key: bytes | None = None) -> ClassifyEvalResult:
    """Metrics of a classification run (or of every seed of a --seeds run) on ``split`` or ``files``.

    ``key`` opens an encrypted run and data folder (else $HWLM_DATA_KEY)."""
    from hwlm.train.classify_load import SEEDS_FILE, seed_runs

    run = Path(run)
    dev = _device(device)
    if (run / SEEDS_FILE).is_file():
        results = [_evaluate_one(r, split, files, text_field, label_field, dev, batch_size, key)
                   for r in seed_runs(run)]
        first = results[0]
        result = ClassifyEvalResult(run=str(run), step=first.step, source=first.source, examples=first.examples,
                                    labels=first.labels, report=first.report,
                                    seeds=summarize_seeds([r.report for r in results]),
                                    per_seed=[{"run": r.run, "report": r.report} for r in results])
    else:
        result = _evaluate_one(run, split, files, text_field, label_field, dev, batch_size, key)
    if write:
        name = "files" if files else split
        atomic_write_json(run / f"eval-{name}.json", {"version": 1, "kind": "hwlm-classify-eval",
                                                      **result.to_dict()})
    return result


@dataclass
class PredictResult:
    """Where the predictions went, how many rows, how long it took."""

    out: Path
    rows: int
    seconds: float
    labels: list[str]


def _read_texts(path: Path, text_field: str) -> list[str]:
    from hwlm.data.classify import CSV_SUFFIXES

    if not path.is_file():
        raise DataError(f"input {path} does not exist: give a CSV or JSON Lines file")
    texts: list[str] = []
    if path.suffix.lower() in CSV_SUFFIXES:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if text_field not in (reader.fieldnames or []):
                raise DataError(f"{path} has no column {text_field!r} (columns: {', '.join(reader.fieldnames or [])});"
                                " pass --text-field NAME")
            texts = [row[text_field] or "" for row in reader]
        return texts
    for i, row in json_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise DataError(f"{path}:{i} has no string field {text_field!r}; pass --text-field NAME")
        texts.append(row[text_field])
    return texts


def predict_file(run: str | Path, file: str | Path, out: str | Path, text_field: str = "text",
                 batch_size: int = 256, device: str = "auto", progress: bool = True,
                 key: bytes | None = None) -> PredictResult:
    """Label every row of a CSV / JSON Lines ``file``; write ``out`` (.jsonl: ``{"text", "label",
    "probabilities": {label: p}}``; .csv: ``text,label,p_<label>...``) atomically."""
    from hwlm.data.normalize import normalize
    from hwlm.train.classify import predict_batches
    from hwlm.train.classify_load import load_classifier

    t0 = time.perf_counter()
    dev = _device(device)
    loaded = load_classifier(run, dev, key)
    if loaded.tokenizer is None:
        raise ConfigError("this classifier reads feature rows, not text; predict needs a text classifier")
    texts = _read_texts(Path(file), text_field)
    prep = loaded.run_config["data"].get("prepare", {})
    clean = [normalize(t, prep.get("normalize", "nfkc"), prep.get("strip_control", True)).strip() for t in texts]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(clean), unit="row", file=sys.stderr, desc="predict")
    probs = predict_batches(loaded.model, _rows_of(loaded, clean), loaded.spec.get("pad_id") or 0, False, dev,
                            batch_size, on_batch=(lambda n: bar.update(n - bar.n)) if bar else None)
    if bar:
        bar.close()
    labels, out = loaded.labels, Path(out)
    best = probs.argmax(-1).tolist() if len(texts) else []
    if out.suffix.lower() == ".csv":
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["text", "label", *[f"p_{name}" for name in labels]])
        for t, k, p in zip(texts, best, probs.tolist()):
            w.writerow([t, labels[k], *[f"{v:.6f}" for v in p]])
        atomic_write_text(out, buf.getvalue())
    else:
        atomic_write_text(out, "".join(
            json.dumps({"text": t, "label": labels[k], "probabilities": dict(zip(labels, map(float, p)))},
                       ensure_ascii=False) + "\n" for t, k, p in zip(texts, best, probs.tolist())))
    return PredictResult(out=out, rows=len(texts), seconds=time.perf_counter() - t0, labels=labels)
