"""Explanation terms and their formatting."""

from __future__ import annotations

from hwlm.plan.explain import Term, Terms, format_terms, si


def test_terms_record_and_format() -> None:
    t = Terms()
    v = t.add("flops", "6 x N x D", 1.5e21, "FLOP", "Kaplan et al. 2020")
    assert v == 1.5e21 and t.get("flops") == Term("flops", "6 x N x D", 1.5e21, "FLOP", "Kaplan et al. 2020")
    text = format_terms(t)
    assert "1.5 ZFLOP" in text and "6 x N x D" in text and "[Kaplan et al. 2020]" in text


def test_si() -> None:
    assert si(3.2e12, "FLOP") == "3.2 TFLOP"
    assert si(0.0123, "s") == "12.3 ms"
    assert si(0, "B") == "0 B"
