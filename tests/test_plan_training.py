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


def test_activation_memory_is_the_formulas_count() -> None:
    """Under framework=hwlm the planner's activations are hwlm.formulas' tensor-by-tensor count (tested
    against autograd in test_formulas.py): flash kernels keep no (T, T) probabilities, so none == selective;
    full keeps the layer inputs and one layer's set; the loss's saved gradient and compiled logits on top."""
    from hwlm.formulas import loss_transient_bytes, saved_activation_bytes_per_layer, saved_outside_layers_bytes
    m = get_model("llama-2-7b")
    s, L = 4096, 32
    loss = saved_outside_layers_bytes(m.spec, s, "bf16") + loss_transient_bytes(m.spec, s, "bf16", compiled=True)

    def acts(rc: str) -> float:
        return estimate_training(m, 1e9, "a100-80gb", 8, framework="hwlm",
                                 layout=Layout(dp=8, zero_stage=3, recompute=rc)).memory.activations

    def layer(rc: str) -> float:
        return saved_activation_bytes_per_layer(m.spec, s, s, "bf16", "flash", rc)
    assert acts("none") == acts("selective") == pytest.approx(L * layer("none") + loss)
    assert acts("full") == pytest.approx(L * layer("full") + layer("none") - layer("full") + loss)
    assert layer("full") == 4 * s * 4096   # the fp32 residual stream entering each layer


@pytest.mark.parametrize("framework", ["megatron", "nemo", "deepspeed", "fsdp", "torchtitan", "llm-foundry"])
def test_megatron_style_frameworks_use_korthikantis_count(framework: str) -> None:
    """16-bit-weight stacks keep Korthikanti et al.'s 34·s·b·h per layer (FlashAttention: no s² terms),
    2·s·b·h under full recompute, divided by tp with sequence parallelism, plus 4·s·b·(h + v)/t outside
    the layers and the compiled loss's transient logits; hwlm's autocast count is larger."""
    from hwlm.formulas import korthikanti_activation_bytes_per_layer, korthikanti_outside_layers_bytes, loss_transient_bytes
    m = get_model("llama-2-7b")
    s, L, h, tp = 4096, 32, 4096, 2
    loss = (korthikanti_outside_layers_bytes(m.spec, s, 1, 1) + loss_transient_bytes(m.spec, s, "bf16", compiled=True)) / tp

    def est(rc: str, **kw):
        return estimate_training(m, 1e9, "a100-80gb", 8, framework=framework,
                                 layout=Layout(dp=4, tp=tp, zero_stage=3, recompute=rc), **kw)
    # Llama's SwiGLU (F = 11008) is not GPT's 4h MLP: the count follows the shape (34 sbh only for GPT).
    layer = korthikanti_activation_bytes_per_layer(m.spec, s, 1, "selective", tp)
    assert layer == korthikanti_activation_bytes_per_layer(m.spec, s, 1, "none", tp)
    assert est("selective").memory.activations == pytest.approx(L * layer + loss)
    full = 2 * s * h / tp
    assert est("full").memory.activations == pytest.approx(L * full + layer - full + loss)
    hwlm = estimate_training(m, 1e9, "a100-80gb", 8, framework="hwlm", layout=Layout(dp=4, tp=tp, zero_stage=3))
    assert hwlm.memory.activations > 1.5 * est("selective").memory.activations
    # autocast=True is hwlm's loop (fp32 weights cast per matmul) whatever the stack is called.
    assert est("selective", autocast=True).memory.activations == pytest.approx(hwlm.memory.activations)
    assert any("korthikanti count" in t.formula for t in est("selective").terms)


def test_partial_recompute_is_the_fewest_layers_that_fit() -> None:
    # Llama 3.1 405B at tp 8, pp 16 under FSDP (the published 8,192-GPU layout): a few layers recomputed
    # fully fit, one fewer does not (the recomputed layer's set alive again in its backward counted).
    from dataclasses import replace as _replace
    kw = dict(seq_len=8192, global_batch=2048, tp=8, pp=16, zero_stage=3, schedule="1f1b", find_smallest=False)
    e = estimate_training("llama-3.1-405b", 1.6e7, "h100-sxm", 8192, **kw)
    k = e.layout.recompute_layers
    assert e.fits and e.layout.recompute == "partial" and 1 <= k < 126
    fewer = estimate_training("llama-3.1-405b", 1.6e7, "h100-sxm", 8192, layout=_replace(e.layout, recompute_layers=k - 1),
                              find_smallest=False)
    assert not fewer.fits


def test_this_machine_defaults_to_hwlms_count() -> None:
    # A calibrated local GPU (vendor "local") ran hwlm's own loop, so its default stack and count are hwlm's.
    from dataclasses import replace as _replace
    from hwlm.plan import get_device
    local = _replace(get_device("h100-sxm"), vendor="local")
    e = estimate_training("gpt2-124m", 1e8, local, 1, seq_len=256, global_batch=4)
    assert e.framework == "hwlm" and any("hwlm count" in t.formula for t in e.terms)
    assert estimate_training("gpt2-124m", 1e8, "h100-sxm", 1, seq_len=256, global_batch=4).framework == "megatron"


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
    small = t["gemm_memory_time"] + t["logits_time"] + t["kernel_overhead_time"]
    assert t["matmul_time"] + t["elementwise_time"] + small == pytest.approx(t["compute_time"])
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


SMALL = ("gemm_memory_time", "logits_time", "kernel_overhead_time")


def _tiny_on_cpu(precision: str = "fp32", **dev_kw: float) -> "TrainingEstimate":  # noqa: F821
    from hwlm.plan.machine import machine_device
    from hwlm.plan.models import trainable_model

    dev = machine_device({precision: 2e11}, 1e10, 16e9, **{"op_overhead_s": 4e-6, "act_bw": 3e10, **dev_kw})
    return estimate_training(trainable_model("tiny", block_size=64, vocab_size=2048), 16 * 64 * 100, dev, 1,
                             precision=precision, seq_len=64, global_batch=16, micro_batch=16, tp=1, pp=1,
                             zero_stage=0, recompute="none", find_smallest=False, autocast=precision != "fp32")


@pytest.mark.parametrize("model, hw, n", [("llama-2-7b", "a100-80gb", 64), ("llama-3.1-70b", "h100-sxm", 1024)])
def test_small_model_terms_vanish_at_scale(model: str, hw: str, n: int) -> None:
    t = {x.name: x.value for x in estimate_training(model, 1e11, hw, n).terms}
    assert t["kernel_overhead_time"] == 0.0  # launches run ahead of long kernels
    assert t["gemm_memory_time"] == 0.0       # every product is compute-bound
    assert t["logits_time"] < 0.02 * t["compute_time"]


def test_small_model_terms_matter_for_a_tiny_model_on_a_cpu() -> None:
    t = {x.name: x.value for x in _tiny_on_cpu().terms}
    assert all(t[k] > 0 for k in SMALL)
    assert sum(t[k] for k in SMALL) > 0.1 * t["compute_time"]
    assert t["kernel_host_time"] == pytest.approx(t["micro_steps_per_device"] * 165 * 4e-6)


def test_small_model_terms_move_the_right_way() -> None:
    base = _tiny_on_cpu()
    assert _tiny_on_cpu(op_overhead_s=40e-6).time_s > base.time_s
    assert _tiny_on_cpu(act_bw=3e11).time_s < base.time_s
    host = {x.name: x.value for x in base.terms}["kernel_host_time"]
    assert {x.name: x.value for x in _tiny_on_cpu(op_overhead_s=8e-6).terms}["kernel_host_time"] == pytest.approx(2 * host)


def test_cpu_bf16_pays_casts_and_fp32_elementwise() -> None:
    fp32, bf16 = ({x.name: x.value for x in _tiny_on_cpu(p).terms} for p in ("fp32", "bf16"))
    assert bf16["autocast_cast_time"] > 0 and "autocast_cast_time" not in fp32
    # no faster element-wise work in 16 bits on a CPU
    assert bf16["elementwise_time"] == pytest.approx(fp32["elementwise_time"])


def test_fp32_activations_take_four_bytes() -> None:
    m = get_model("gpt2")
    lay = Layout(dp=1, recompute="selective")
    a16 = estimate_training(m, 1e9, "a100-80gb", 1, layout=lay, precision="bf16", framework="hwlm").memory.activations
    a32 = estimate_training(m, 1e9, "a100-80gb", 1, layout=lay, precision="fp32", framework="hwlm").memory.activations
    # Megatron-style count: every saved value doubles in fp32 but the 1-byte dropout masks (2 sbh of 34).
    from hwlm.formulas import korthikanti_activation_bytes_per_layer as kor
    sbh = 1024 * m.spec.d_model
    assert kor(m.spec, 1024, precision="fp32") - kor(m.spec, 1024) == pytest.approx(32 * sbh)
    from hwlm.formulas import loss_transient_bytes, saved_activation_bytes_per_layer
    layer32, layer16 = (saved_activation_bytes_per_layer(m.spec, 1024, 1024, p) for p in ("fp32", "bf16"))
    assert layer16 < layer32 < 2 * layer16  # the residual stream and norms are fp32 in both (and 16-bit weight copies)
    # Compiled loss on a GPU: the fp32 gradient (4) + 16-bit logits and their fp32 copy (6) in bf16, 4 in fp32.
    elems = 1024 * m.spec.vocab_size
    assert loss_transient_bytes(m.spec, 1024, "bf16", compiled=True) == 6.0 * elems
    assert loss_transient_bytes(m.spec, 1024, "fp32", compiled=True) == 4.0 * elems
    # hwlm's loop fuses the output layer and loss in row chunks in fp32 (no autocast), whole logits in bf16.
    from hwlm.formulas import heap_slack_bytes, saved_outside_layers_bytes
    outside32 = (saved_outside_layers_bytes(m.spec, 1024, "fp32", "chunked")
                 + loss_transient_bytes(m.spec, 1024, "fp32", "chunked", "gpu")
                 + heap_slack_bytes(m.spec, 1024, "chunked", "gpu"))
    outside16 = (saved_outside_layers_bytes(m.spec, 1024, "bf16") + 6.0 * elems
                 + heap_slack_bytes(m.spec, 1024, "full", "gpu"))
    assert outside32 < outside16  # no (N, V) logits held in fp32
    assert a32 - a16 == pytest.approx(m.spec.n_layers * (layer32 - layer16) + outside32 - outside16)


def test_small_model_terms_are_explained() -> None:
    from hwlm.plan.explain import format_terms

    text = format_terms(_tiny_on_cpu("bf16").terms)
    for name in (*SMALL, "kernel_host_time", "autocast_cast_time", "measured activation-sized copy"):
        assert name in text
    assert "tiny autograd chain" in text  # the measured per-kernel cost names its source


def _train_calibration(tmp_path, device: str, eff: float) -> str:
    cal = tmp_path / "cal-train.json"
    cal.write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "entries": [
        {"device": device, "dtype": "bf16", "phase": "train", "efficiency": eff, "source": "synthetic bench record"}]}))
    return str(cal)


def test_calibrated_prediction_reproduces_the_calibrating_record(tmp_path) -> None:
    # A synthetic `hwlm bench train` record: gpt2-124m, batch 16 x seq 1024 in one micro-batch on an H200,
    # 400k tokens/s steady state. `hwlm bench calibrate` turns it into achieved FLOP/s / datasheet peak.
    from hwlm.formulas import train_flops_per_token
    from hwlm.plan import get_device

    measured = 400_000.0
    m, dev = get_model("gpt2-124m"), get_device("h200")
    eff = measured * train_flops_per_token(m.spec, 1024) / dev.peak_flops("bf16")
    cal = _train_calibration(tmp_path, "h200", eff)
    e = estimate_training(m, 200 * 16 * 1024, "h200", 1, seq_len=1024, global_batch=16, calibration=cal)
    assert e.tokens_per_s == pytest.approx(measured, rel=1e-6)  # steady state: no run overhead
    assert e.step_time_s == pytest.approx(16 * 1024 / measured, rel=1e-6)
    # The whole run still pays for evaluations, checkpoints and restarts.
    assert e.time_s > e.steady_time_s and e.overhead_time_s == pytest.approx(e.time_s - e.steady_time_s)
    d = e.to_dict()
    assert d["tokens_per_s"] == pytest.approx(measured, rel=1e-6) and d["run_tokens_per_s"] < measured
    # Another workload on the same calibration: same end-to-end efficiency, so a shorter sequence
    # (fewer attention FLOPs per token) trains a little faster, and a smaller batch as fast.
    short = estimate_training(m, 1e8, "h200", 1, seq_len=512, global_batch=16, calibration=cal)
    assert measured < short.tokens_per_s < 1.1 * measured
    half = estimate_training(m, 1e8, "h200", 1, seq_len=1024, global_batch=8, calibration=cal)
    assert half.tokens_per_s == pytest.approx(measured, rel=1e-6)


def test_micro_batch_grows_to_what_fits() -> None:
    # gpt2-124m, 16 x 1024 on an H200: one micro-batch of 16 fits (as hwlm bench train ran it) and
    # needs fewer kernel launches than 16 micro-steps of one sequence.
    # The measurement is hwlm's own loop (hwlm bench train), so its stack and activation count.
    e = estimate_training("gpt2-124m", 1e8, "h200", 1, seq_len=1024, global_batch=16, framework="hwlm")
    assert e.layout.micro_batch == 16
    one = estimate_training("gpt2-124m", 1e8, "h200", 1, seq_len=1024, global_batch=16, micro_batch=1, framework="hwlm")
    assert one.layout.micro_batch == 1 and one.tokens_per_s < e.tokens_per_s
    # Memory: hwlm.formulas' count (16 B/param, the blocks' saved tensors, 10 B per compiled bf16 logit).
    from hwlm.formulas import training_memory
    spec = get_model("gpt2-124m").spec
    # One process, one micro-batch a step: the gradients are not alive beside the activations (no DDP buckets, no
    # accumulation), the planner's count is formulas' default; a data-parallel layout counts both.
    expected = training_memory(spec, 16, 1024, "bf16", compiled=True, device_kind="gpu").total
    assert e.memory.total == pytest.approx(expected)
    assert e.memory.total == pytest.approx(15.58e9, rel=0.05)  # measured peak allocated on an H200 (torch.compile)
    # Never more than the batch per device, and it must divide it.
    odd = estimate_training("gpt2-124m", 1e8, "h200", 1, seq_len=1024, global_batch=12)
    assert 12 % odd.layout.micro_batch == 0 and odd.layout.micro_batch == 4


def test_largest_micro_batch_that_fits_is_reported() -> None:
    from dataclasses import replace as _replace
    e = estimate_training("llama-2-7b", 1e10, "h100-sxm", 8, tp=1, pp=1, zero_stage=3)
    mb = e.max_micro_batch
    assert mb >= 1 and e.to_dict()["max_micro_batch"] == mb
    fits = estimate_training("llama-2-7b", 1e10, "h100-sxm", 8, layout=_replace(e.layout, micro_batch=mb))
    over = estimate_training("llama-2-7b", 1e10, "h100-sxm", 8, layout=_replace(e.layout, micro_batch=2 * mb),
                             find_smallest=False)
    assert fits.fits and not over.fits


def test_trainium_pads_heads_under_a_tp_that_does_not_divide_them() -> None:
    """Llama 2 13B has 40 heads: tp=16 on Trainium trains the model padded to 48 (the inference rule),
    shown as a term; the FLOPs are the padded model's."""
    from hwlm.formulas import train_flops_per_token
    from hwlm.plan.models import get_model, pad_heads
    e = estimate_training("llama-2-13b", 1e9, "trn1", 32, tp=16, seq_len=4096, find_smallest=False)
    padded, note = pad_heads(get_model("llama-2-13b"), 16)
    assert padded.spec.n_heads == 48 and note in e.notes
    terms = {t.name: t.value for t in e.terms}
    assert terms["head_padding"] == 48
    assert e.flops == pytest.approx(1e9 * train_flops_per_token(padded.spec, 4096))
    with pytest.raises(PlanError, match="does not divide the 40 attention heads"):
        estimate_training("llama-2-13b", 1e9, "h100-sxm", 32, tp=16, find_smallest=False)


def test_fp8_training_runs_the_attention_scores_in_16_bits() -> None:
    """FP8 recipes cast the linear layers (Transformer Engine fp8_dpa=False by default, torchtitan's nn.Linear
    swap): the attention-score FLOPs of an fp8 run are priced at the device's 16-bit matmul rate, the rest at
    fp8; a bf16 run has no such term."""
    from hwlm.formulas import attention_flops_per_pair
    from hwlm.plan.efficiency import priors_for
    from hwlm.plan.catalog import get_device

    kw = dict(tp=1, pp=1, global_batch=128, framework="torchtitan")
    e8 = estimate_training("llama-3.1-8b", 128 * 8192, "h100-sxm", 8, precision="fp8", seq_len=8192, **kw)
    e16 = estimate_training("llama-3.1-8b", 128 * 8192, "h100-sxm", 8, precision="bf16", seq_len=8192, **kw)
    t8, t16 = {x.name: x.value for x in e8.terms}, {x.name: x.value for x in e16.terms}
    assert "attention_16bit_time" not in t16
    dev, spec = get_device("h100-sxm"), get_model("llama-3.1-8b").spec
    rate = dev.peak_flops("bf16") * priors_for("gpu", "bf16", dev.peak_flops("bf16"), dev.memory_bw).matmul_eff
    rc = e8.layout.recompute_fraction(spec.n_layers) / 3 + 1
    f_att = 128 * 8192 * 3 * 8192 * attention_flops_per_pair(spec)
    assert t8["attention_16bit_time"] == pytest.approx(f_att * rc / (8 * rate))
    # same layout: the attention share of the bf16 run's matmul time is the same seconds; only the linear
    # layers got faster
    assert e8.layout == e16.layout
    assert t8["attention_16bit_time"] == pytest.approx(t16["matmul_time"] * f_att / t16["flops"], rel=1e-6)
    assert t8["matmul_time"] < t16["matmul_time"]
