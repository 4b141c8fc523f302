"""hwlm's classification metrics equal scikit-learn's on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest

from hwlm.evaluate_classify import classification_report, confusion_matrix, macro_f1, summarize_seeds

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 4
    y = rng.integers(0, k, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, k, 300))
    if seed == 2:
        pred[pred == 3] = 0  # a class never predicted: precision 0 (zero_division=0)
    names = [f"c{i}" for i in range(k)]
    ours = classification_report(y.tolist(), pred.tolist(), names)
    ref = sklearn_metrics.classification_report(y, pred, labels=list(range(k)), target_names=names,
                                                output_dict=True, zero_division=0)
    for name in names + ["macro avg", "weighted avg"]:
        for key in ("precision", "recall", "f1-score", "support"):
            assert ours[name][key] == pytest.approx(ref[name][key], abs=1e-12), (name, key)
    assert ours["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, pred))
    micro = sklearn_metrics.precision_recall_fscore_support(y, pred, average="micro")
    assert ours["micro avg"]["f1-score"] == pytest.approx(micro[2])
    assert np.array_equal(ours["confusion_matrix"], sklearn_metrics.confusion_matrix(y, pred, labels=range(k)))
    assert macro_f1(y.tolist(), pred.tolist(), k) == pytest.approx(sklearn_metrics.f1_score(y, pred, average="macro"))


def test_confusion_matrix_orientation() -> None:
    m = confusion_matrix([0, 0, 1], [1, 1, 1], 2)
    assert m.tolist() == [[0, 2], [0, 1]]  # rows are the true class


def test_seed_summary_is_mean_and_sample_std() -> None:
    reports = [classification_report([0, 1, 1, 0], p, ["a", "b"]) for p in ([0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0])]
    s = summarize_seeds(reports)
    accs = [r["accuracy"] for r in reports]
    assert s["seeds"] == 3
    assert s["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert s["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert "a f1-score" in s and "macro avg f1-score" in s
