"""Compute-optimal model sizing from a fitted scaling law (Chinchilla).

Loss is modelled as ``L(N, D) = E + A / N^alpha + B / D^beta`` (N parameters, D tokens) and
training compute as ``C = 6·N·D``. Minimising L under fixed C gives (Hoffmann et al. 2022,
arXiv:2203.15556, appendix D.2, eq. 4)::

    N_opt = G · (C/6)^(beta/(alpha+beta)),  D_opt = (C/6)^(alpha/(alpha+beta)) / G,
    G = (alpha·A / (beta·B))^(1/(alpha+beta))

Worked example: Chinchilla's own budget of 5.76e23 FLOP gives about 32B parameters on 3.0T
tokens with the approach-3 fit (~93 tokens per parameter), while the Epoch AI refit, whose
exponents are nearly equal, gives about 72B on 1.3T (~18 tokens per parameter, close to the
paper's approaches 1 and 2 and the trained Chinchilla, 70B on 1.4T):

    >>> r = compute_optimal(5.76e23)
    >>> round(r.params / 1e9), round(r.tokens / 1e12, 1)
    (32, 3.0)
    >>> r = compute_optimal(5.76e23, law="epoch")
    >>> round(r.params / 1e9), round(r.tokens / 1e12, 1)
    (72, 1.3)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hwlm.errors import PlanError
from hwlm.plan.catalog import Device, get_device
from hwlm.plan.efficiency import priors_for

__all__ = ["ScalingLaw", "LAWS", "OptimalSize", "compute_optimal", "budget_from_hardware"]


@dataclass(frozen=True)
class ScalingLaw:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params ** self.alpha + self.B / tokens ** self.beta


LAWS = {
    "chinchilla": ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
                             source="Hoffmann et al. 2022, arXiv:2203.15556, approach 3 (eq. 10)"),
    "epoch": ScalingLaw(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
                        source="Besiroglu et al. 2024 (Epoch AI), arXiv:2404.10102, Chinchilla replication refit"),
}


@dataclass(frozen=True)
class OptimalSize:
    """Compute-optimal parameters and tokens for a FLOP budget, with the predicted loss."""

    budget_flops: float
    params: float
    tokens: float
    tokens_per_param: float
    loss: float
    law: str
    source: str
    assumptions: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hwlm-plan-optimal", **asdict(self)}


def budget_from_hardware(hardware: str | Device, devices: int, hours: float, precision: str = "bf16",
                         mfu: float | None = None) -> tuple[float, str]:
    """FLOPs a cluster delivers in ``hours`` at a realistic utilisation (the planner's prior)."""
    dev = hardware if isinstance(hardware, Device) else get_device(hardware)
    if devices < 1 or hours <= 0:
        raise PlanError(f"devices must be >= 1 and hours > 0, got {devices} and {hours}")
    peak = dev.peak_flops(precision)
    # Default utilisation: the matmul prior less a quarter for everything else (communication,
    # element-wise work, bubbles); the planner's training estimates land near it for large runs.
    u = mfu if mfu is not None else priors_for(dev.kind, precision, peak, dev.memory_bw,
                                               balance_penalty=dev.balance_penalty(precision)).matmul_eff * 0.75
    flops = peak * devices * hours * 3600 * u
    return flops, f"{devices} x {dev.id} x {hours:g} h x peak {peak:.4g} x MFU {u:.2f}"


def compute_optimal(budget_flops: float | None = None, *, hardware: str | Device | None = None,
                    devices: int = 1, hours: float | None = None, usd: float | None = None,
                    precision: str = "bf16", law: str = "chinchilla") -> OptimalSize:
    """Compute-optimal size for a FLOP budget, a (hardware, devices, hours) or a (usd, hardware) budget."""
    if law not in LAWS:
        raise PlanError(f"unknown scaling law {law!r}; choose one of {', '.join(LAWS)}")
    note = ""
    if budget_flops is None:
        if hardware is None:
            raise PlanError("give a FLOP budget, or --hardware with --hours (and --devices) or with --usd")
        if usd is not None:
            dev = hardware if isinstance(hardware, Device) else get_device(hardware)
            if not dev.price_per_hour:
                raise PlanError(f"{dev.id} has no catalog price; give a FLOP budget or --hours instead of --usd")
            hours = usd / (dev.price_per_hour * devices)
        if hours is None:
            raise PlanError("with --hardware give --hours or --usd")
        budget_flops, note = budget_from_hardware(hardware, devices, hours, precision)
    if not budget_flops or budget_flops <= 0:
        raise PlanError(f"the FLOP budget must be positive, got {budget_flops!r}")
    s = LAWS[law]
    g = (s.alpha * s.A / (s.beta * s.B)) ** (1 / (s.alpha + s.beta))
    n = g * (budget_flops / 6) ** (s.beta / (s.alpha + s.beta))
    d = (budget_flops / 6) ** (s.alpha / (s.alpha + s.beta)) / g
    return OptimalSize(budget_flops=budget_flops, params=n, tokens=d, tokens_per_param=d / n, loss=s.loss(n, d),
                       law=law, source=s.source, assumptions=note or "C = 6·N·D")
