"""The planner's price of a trial's configuration on other hardware (torch-free, through :mod:`hwlm.plan`).

For the same training tokens the trial ran, :func:`hwlm.plan.estimate_training` predicts the time,
energy and cost on each ``--price-on`` catalog device, for the trial's own Transformer shape (a
language model, or a Transformer classifier's trunk). LSTM, bag-of-words and MLP classifiers have no
planner model: their entry says so instead of guessing.
"""

from __future__ import annotations

from typing import Any

from hwlm.errors import HwlmError

__all__ = ["price_trial"]


def _shape(tables: dict[str, dict[str, Any]], vocab_size: int) -> tuple[Any, int, int] | str:
    """(planner Model, sequence length, global batch) of the trial, or why there is none."""
    from hwlm.plan.models import trainable_model

    task = tables.get("task", {})
    if task.get("task") == "classify" and task.get("classifier", "transformer") != "transformer":
        return f"the planner models Transformers only, not a {task['classifier']} classifier"
    if task.get("init_from"):
        return "the trunk comes from --init-from; price that run's shape with hwlm plan"
    train = tables.get("train", {})
    name = train.get("model", "tiny")
    model = trainable_model(name, **{**tables.get("model", {}), "vocab_size": vocab_size})
    if model is None:
        return f"model {name!r} is not one of hwlm's trainable presets"
    seq = model.seq_len if task.get("task") != "classify" else min(int(task.get("max_len", 128)), model.seq_len)
    return model, seq, int(train.get("batch_size", 16)) * int(train.get("grad_accum", 1))


def price_trial(tables: dict[str, dict[str, Any]], tokens: int, hardware: list[str],
                vocab_size: int) -> dict[str, Any]:
    """``{hardware: {"time_s", "energy_kwh", "cost_usd", "mfu"} or {"note"}}`` for ``tokens`` of training."""
    from hwlm.plan import TrainingJob, estimate_training

    shape = _shape(tables, vocab_size)
    out: dict[str, Any] = {}
    for hw in hardware:
        if isinstance(shape, str):
            out[hw] = {"note": shape}
            continue
        model, seq, batch = shape
        try:
            e = estimate_training(TrainingJob(model=model, tokens=float(max(tokens, 1)), hardware=hw, precision="bf16",
                                              seq_len=seq, global_batch=batch, framework="hwlm", find_smallest=False))
        except HwlmError as exc:
            out[hw] = {"note": str(exc)}
            continue
        out[hw] = {"time_s": e.time_s, "energy_kwh": e.energy_kwh, "cost_usd": e.cost_usd, "mfu": e.mfu}
    return out
