"""The validation harness runs every published case and the planner beats the plain rule on them."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
pv = pytest.importorskip("planner_validation")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    if not pv.CASES.exists():
        pytest.skip("benchmarks/planner_cases.toml not present")
    return pv.build_rows(pv.load_cases(pv.CASES), {})


def _median(rows: list[dict], key: str, kinds: tuple[str, ...]) -> float:
    return statistics.median(abs(r[key]) for r in rows if r["kind"] in kinds and r[key] is not None)


def test_every_case_is_predicted(rows) -> None:
    missing = [r["id"] for r in rows if r["hwlm_err"] is None]
    assert not missing, missing


def test_planner_beats_the_plain_rule(rows) -> None:
    for kinds in (("train",), ("prefill", "decode")):
        assert _median(rows, "hwlm_err", kinds) < _median(rows, "plain_err", kinds)
    assert _median(rows, "hwlm_err", ("prefill", "decode")) <= 0.15


def test_report_renders(rows, tmp_path) -> None:
    text = pv.render(rows, pv.eff.kind_priors("gpu"))
    assert "| training, held-out |" in text and "## Every case" in text
