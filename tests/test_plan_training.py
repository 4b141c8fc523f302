"""Training estimates: FLOPs, memory by ZeRO stage / tp / pp, layouts, fits, terms, calibration."""

from __future__ import annotations

import json

import pytest

from hwlm.errors import PlanError
from hwlm.formulas import train_flops_per_token
from hwlm.plan import Layout, estimate_training, get_model


def test_flops_and_basic_fields() -> None:
    e = estimate_training("gpt2", 1e9, "a100-80gb", 8)
    spec = get_model("gpt2").spec
    assert e.flops == pytest.approx(1e9 * train_flops_per_token(spec, 1024))
    assert e.fits and e.time_s > 0 and e.device_hours == pytest.approx(e.time_s * 8 / 3600)
    assert 0.05 < e.mfu < 0.7
    assert e.energy_kwh is not None and e.co2_kg == pytest.approx(e.energy_kwh * 0.475)
    assert e.cost_usd == pytest.approx(e.device_hours * 5.12, rel=0.5)  # catalog price, whatever its exact value


def test_mixed_precision_adam_is_16_bytes_per_param_and_zero_shards() -> None:
    m = get_model("llama-2-7b")
    p = m.params.total
    base = estimate_training(m, 1e9, "a100-80gb", 8, layout=Layout(dp=8, zero_stage=0))
    assert base.memory.weights + base.memory.gradients + base.memory.optimizer == pytest.approx(16 * p)
    z1 = estimate_training(m, 1e9, "a100-80gb", 8, layout=Layout(dp=8, zero_stage=1)).memory
    z2 = estimate_training(m, 1e9, "a100-80gb", 8, layout=Layout(dp=8, zero_stage=2)).memory
    z3 = estimate_training(m, 1e9, "a100-80gb", 8, layout=Layout(dp=8, zero_stage=3)).memory
    assert z1.optimizer == pytest.approx(12 * p / 8) and z1.gradients == pytest.approx(2 * p)
    assert z2.gradients == pytest.approx(2 * p / 8) and z2.weights == pytest.approx(2 * p)
    assert z3.weights == pytest.approx(2 * p / 8)
    tp = estimate_training(m, 1e9, "a100-80gb", 8, layout=Layout(dp=2, tp=2, pp=2)).memory
    assert tp.weights == pytest.approx(2 * p / 4)


def test_activation_memory_korthikanti() -> None:
    m = get_model("llama-2-7b")
    s, h, L, a = 4096, 4096, 32, 32
    logits = 2 * 4.0 * s * 32000

    def acts(rc: str) -> float:
        return estimate_training(m, 1e9, "a100-80gb", 8, layout=Layout(dp=8, zero_stage=3, recompute=rc)).memory.activations

    assert acts("none") == pytest.approx(L * s * h * (34 + 5 * a * s / h) + logits)
    assert acts("selective") == pytest.approx(L * s * h * 34 + logits)
    assert acts("full") == pytest.approx(L * 2 * s * h + s * h * 34 + logits)


def test_recompute_costs_time() -> None:
    fast = estimate_training("llama-2-7b", 1e9, "a100-80gb", 8, layout=Layout(dp=8, zero_stage=3, recompute="selective"))
    slow = estimate_training("llama-2-7b", 1e9, "a100-80gb", 8, layout=Layout(dp=8, zero_stage=3, recompute="full"))
    assert slow.time_s > fast.time_s * 1.2


def test_auto_layout_prefers_simple_and_fits() -> None:
    e = estimate_training("gpt2", 1e9, "h100-sxm", 8)
    assert (e.layout.tp, e.layout.pp, e.layout.zero_stage) == (1, 1, 0)
    big = estimate_training("llama-2-70b", 2e12, "a100-80gb", 64)
    assert big.fits and big.memory.total <= 80e9 * 0.9


def test_does_not_fit_names_smallest_layout() -> None:
    e = estimate_training("llama-2-70b", 1e9, "a100-80gb", 1)
    assert e.fits is False
    assert e.smallest_fitting is not None and "x a100-80gb with dp=" in e.smallest_fitting
    n = int(e.smallest_fitting.split(" x ")[0])
    assert estimate_training("llama-2-70b", 1e9, "a100-80gb", n).fits
    assert not estimate_training("llama-2-70b", 1e9, "a100-80gb", n // 2).fits


@pytest.mark.parametrize("kwargs, message", [
    ({"tp": 3}, r"tp=3 x pp=1 does not divide --devices 8"),
    ({"layout": Layout(dp=2, tp=3)}, r"does not match --devices 8"),
    ({"layout": Layout(dp=1, tp=8)}, r"tp=8 does not divide the 12 attention heads of gpt2-124m"),
    ({"pp": 8, "model": "bert-base"}, None),
    ({"layout": Layout(dp=1, pp=16), "devices": 16}, r"pp=16 exceeds the 12 layers of gpt2-124m"),
    ({"tokens": 0}, r"--tokens must be a positive number"),
    ({"precision": "int4"}, r"training precision 'int4' is not supported"),
    ({"devices": 0}, r"--devices must be a whole number >= 1"),
    ({"hardware": "v100", "precision": "bf16"}, r"v100 has no published peak for dtype 'bf16'"),
    ({"pue": 0.5}, r"--pue 0.5 must be >= 1"),
    ({"global_batch": 2, "layout": Layout(dp=8)}, r"global batch 2 sequences is smaller than dp=8"),
])
def test_bad_inputs(kwargs: dict, message: str | None) -> None:
    args = {"model": "gpt2", "tokens": 1e9, "hardware": "a100-80gb", "devices": 8, **kwargs}
    model, tokens, hw, n = args.pop("model"), args.pop("tokens"), args.pop("hardware"), args.pop("devices")
    if message is None:
        assert estimate_training(model, tokens, hw, n, **args).layout.pp == 8
        return
    with pytest.raises(PlanError, match=message):
        estimate_training(model, tokens, hw, n, **args)


def test_terms_add_up() -> None:
    e = estimate_training("llama-2-13b", 1e11, "a100-80gb", 64, tp=2, pp=2)
    t = {x.name: x.value for x in e.terms}
    mem = sum(t[k] for k in ("memory_weights", "memory_gradients", "memory_optimizer", "memory_activations"))
    assert mem == pytest.approx(t["memory_per_device"]) == pytest.approx(e.memory.total)
    busy = t["compute_time"] + t.get("tp_comm_time", 0) + t.get("pp_comm_time", 0)
    step_total = busy + t["bubble_time"] + t["dp_comm_exposed_time"]
    assert t["time"] == pytest.approx(step_total / (1 - 0.19), rel=0.05)
    assert t["time"] == pytest.approx(e.compute_time_s + e.comm_time_s + e.bubble_time_s + e.overhead_time_s)
    assert t["matmul_time"] + t["elementwise_time"] == pytest.approx(t["compute_time"])
    assert all(x.formula and x.unit is not None for x in e.terms)


def test_more_devices_is_faster_and_to_dict_is_json() -> None:
    a = estimate_training("llama-2-7b", 1e11, "h100-sxm", 8)
    b = estimate_training("llama-2-7b", 1e11, "h100-sxm", 64)
    assert b.time_s < a.time_s / 4
    d = json.loads(json.dumps(b.to_dict()))
    for key in ("flops", "time_s", "device_hours", "memory_per_device_bytes", "fits", "energy_kwh", "co2_kg",
                "cost_usd", "layout"):
        assert key in d


def test_calibration_overrides_prior(tmp_path) -> None:
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "entries": [
        {"device": "a100-80gb", "dtype": "bf16", "phase": "train", "efficiency": 0.2, "source": "test bench"}]}))
    base = estimate_training("gpt2", 1e9, "a100-80gb", 1)
    cal_e = estimate_training("gpt2", 1e9, "a100-80gb", 1, calibration=str(cal))
    assert cal_e.compute_time_s == pytest.approx(base.flops / (312e12 * 0.2), rel=1e-6)
    assert any("test bench" in x.source for x in cal_e.terms)
    assert cal_e.time_s != base.time_s


def test_power_override_and_missing_price() -> None:
    e = estimate_training("gpt2", 1e9, "a100-80gb", 1, power_w=100, price_per_hour=1.0)
    assert e.cost_usd == pytest.approx(e.device_hours)
    assert e.energy_kwh == pytest.approx(e.device_hours * 100 * 1.2 / 1000)
