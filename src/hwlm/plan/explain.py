"""Explanations: every estimate keeps the terms it was built from, so a person can check it by hand.

A :class:`Term` is one named quantity with the formula that produced it (written with
the numbers substituted), its value, its unit and the source of any constant in it.
``hwlm plan ... --explain`` prints :func:`format_terms` of an estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

__all__ = ["Term", "Terms", "format_terms", "si"]


@dataclass(frozen=True)
class Term:
    """One step of an estimate: ``name = formula = value unit  [source]``."""

    name: str
    formula: str
    value: float
    unit: str
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Terms(list):
    """A list of :class:`Term` that records and returns values, so code reads as the formula."""

    def add(self, name: str, formula: str, value: float, unit: str, source: str = "") -> float:
        self.append(Term(name, formula, float(value), unit, source))
        return float(value)

    def get(self, name: str) -> Term:
        for t in self:
            if t.name == name:
                return t
        raise KeyError(name)


def si(value: float, unit: str = "") -> str:
    """``si(3.2e12, 'FLOP')`` -> ``'3.2 TFLOP'``: three significant figures with an SI prefix."""
    if value == 0 or not abs(value) < float("inf"):
        return f"{value:g} {unit}".strip()
    for factor, prefix in ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"),
                           (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".strip()
    return f"{value:.3g} {unit}".strip()


def format_terms(terms: Iterable[Term]) -> str:
    """One line per term: name, value, formula and (indented) the source."""
    lines = []
    for t in terms:
        lines.append(f"{t.name:<28} {si(t.value, t.unit):>16}   = {t.formula}")
        if t.source:
            lines.append(f"{'':<28} {'':>16}     [{t.source}]")
    return "\n".join(lines)
