"""Classification metrics in NumPy, named as scikit-learn's ``classification_report`` names them.

Here (not in :mod:`hwlm.evaluate_classify`, which re-exports them) because the training loop needs
macro-F1 on the validation split too (for ``hwlm tune``'s pruning), and a stage imports only earlier
ones. Definitions follow scikit-learn's, with its ``zero_division=0`` convention: a class never
predicted has precision 0, one absent from the labels recall 0. Tests compare every number with
scikit-learn on the same predictions.

    >>> r = classification_report([0, 1, 1, 2], [0, 1, 2, 2], ["a", "b", "c"])
    >>> r["accuracy"], round(r["macro avg"]["f1-score"], 4)
    (0.75, 0.7778)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["confusion_matrix", "classification_report", "macro_f1", "summarize_seeds"]


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """``m[i, j]`` = examples of true class i predicted as j (scikit-learn's orientation)."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b != 0)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Per class ``{"precision", "recall", "f1-score", "support"}``, plus ``accuracy``, ``micro avg``,
    ``macro avg`` and ``weighted avg`` (scikit-learn's ``output_dict=True`` layout, micro avg always
    given) and ``confusion_matrix`` as a list of rows."""
    k = len(labels)
    m = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(m).astype(np.float64)
    support = m.sum(1).astype(np.float64)
    predicted = m.sum(0).astype(np.float64)
    precision, recall = _div(tp, predicted), _div(tp, support)
    f1 = _div(2 * precision * recall, precision + recall)
    out: dict[str, Any] = {}
    for i, name in enumerate(labels):
        out[str(name)] = {"precision": float(precision[i]), "recall": float(recall[i]), "f1-score": float(f1[i]),
                          "support": int(support[i])}
    n = float(support.sum())
    accuracy = float(tp.sum() / n) if n else 0.0
    out["accuracy"] = accuracy
    # Single-label: micro precision = micro recall = micro F1 = accuracy.
    out["micro avg"] = {"precision": accuracy, "recall": accuracy, "f1-score": accuracy, "support": int(n)}
    out["macro avg"] = {"precision": float(precision.mean()), "recall": float(recall.mean()),
                        "f1-score": float(f1.mean()), "support": int(n)}
    w = support / n if n else support
    out["weighted avg"] = {"precision": float((precision * w).sum()), "recall": float((recall * w).sum()),
                           "f1-score": float((f1 * w).sum()), "support": int(n)}
    out["confusion_matrix"] = m.tolist()
    return out


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    """The macro-averaged F1 (what ``hwlm tune`` maximizes for a classifier)."""
    return classification_report(y_true, y_pred, [str(i) for i in range(n_classes)])["macro avg"]["f1-score"]


def summarize_seeds(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) of accuracy and the averages' F1,
    and each class's F1, over per-seed reports."""
    def stats(values: list[float]) -> dict[str, float]:
        arr = np.asarray(values, dtype=np.float64)
        std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
        return {"mean": float(arr.mean()), "std": std, "min": float(arr.min()), "max": float(arr.max())}

    keys = {"accuracy": [r["accuracy"] for r in reports]}
    for avg in ("macro avg", "weighted avg"):
        keys[f"{avg} f1-score"] = [r[avg]["f1-score"] for r in reports]
    classes = [k for k, v in reports[0].items() if isinstance(v, dict) and not k.endswith(" avg")]
    for name in classes:
        keys[f"{name} f1-score"] = [r[name]["f1-score"] for r in reports]
    out = {k: stats(v) for k, v in keys.items()}
    out["seeds"] = len(reports)
    assert all(math.isfinite(v["mean"]) for k, v in out.items() if isinstance(v, dict))
    return out
