"""Inference estimates: decode is bandwidth-bound, GQA shrinks the KV cache, MoE reads fewer experts."""

from __future__ import annotations

import json

import pytest

from hwlm.errors import PlanError
from hwlm.formulas import kv_cache_bytes_per_token
from hwlm.plan import estimate_inference, get_model


def test_decode_is_bandwidth_bound_at_batch_one() -> None:
    e = estimate_inference("llama-2-7b", "a100-80gb", 1, batch=1, prompt_len=128, gen_len=128, graphs=True)
    t = {x.name: x.value for x in e.terms}
    weights = get_model("llama-2-7b").params.total * 2
    assert t["decode_bytes_per_step"] >= weights
    assert t["decode_memory_time"] > t["decode_compute_time"]
    assert e.tpot_s == pytest.approx(t["decode_memory_time"] + t["layer_overhead"])
    # Never faster than reading the weights at full bandwidth.
    assert e.tpot_s > weights / 2.039e12
    assert e.ttft_s > 0 and e.fits


def test_prefill_is_compute_bound_for_long_prompts() -> None:
    e = estimate_inference("llama-2-7b", "a100-80gb", 1, batch=8, prompt_len=4000, gen_len=16)
    t = {x.name: x.value for x in e.terms}
    assert t["prefill_compute_time"] > t["prefill_weight_read_time"]


def test_gqa_kv_cache_memory() -> None:
    # Llama 2 70B (8 KV heads) vs Llama 2 13B (40): per-token cache 80*8*128*2*2 vs 40*40*128*2*2 bytes.
    big = estimate_inference("llama-2-70b", "h100-sxm", 8, batch=4, prompt_len=1000, gen_len=24)
    assert big.kv_cache_bytes_per_device == pytest.approx(4 * 1024 * 80 * 8 * 128 * 2 * 2 / 8)
    assert kv_cache_bytes_per_token(get_model("llama-2-70b").spec, 2) == 327_680
    assert kv_cache_bytes_per_token(get_model("llama-2-13b").spec, 2) == 819_200  # no GQA: 2.5x more per token


def test_kv_cache_takes_the_serving_precision() -> None:
    # fp32 engines cache keys and values in fp32, fp8 serving in fp8, the 16-bit and weight-only formats in 16 bits.
    kv = {p: estimate_inference("llama-2-7b", "a100-80gb", 1, batch=4, prompt_len=1000, gen_len=24,
                                precision=p).kv_cache_bytes_per_device for p in ("fp32", "bf16", "fp8", "w4a16")}
    assert kv["fp32"] == pytest.approx(2 * kv["bf16"]) and kv["fp8"] == pytest.approx(kv["bf16"] / 2)
    assert kv["w4a16"] == pytest.approx(kv["bf16"])


def test_kv_heads_replicate_when_tp_exceeds_them() -> None:
    # Qwen2.5-7B has 4 KV heads: at tp=8 each device still holds one whole head.
    e = estimate_inference("qwen2.5-7b", "h100-sxm", 4, batch=1, prompt_len=100, gen_len=28, tp=4)
    t = {x.name: x.value for x in e.terms}
    assert t["kv_bytes_per_token_device"] == pytest.approx(28 * 1 * 128 * 2 * 2)


def test_moe_reads_only_touched_experts() -> None:
    one = estimate_inference("mixtral-8x7b", "h100-sxm", 2, batch=1, prompt_len=16, gen_len=16)
    t = {x.name: x.value for x in one.terms}
    pc = get_model("mixtral-8x7b").params
    assert t["decode_bytes_per_step"] == pytest.approx(pc.active * 2 / 2, rel=0.01)
    many = estimate_inference("mixtral-8x7b", "h100-sxm", 2, batch=64, prompt_len=16, gen_len=16)
    tm = {x.name: x.value for x in many.terms}
    assert tm["decode_bytes_per_step"] > pc.total * 2 / 2 * 0.95  # 64 tokens touch ~all experts


def test_quantized_weights_decode_faster_and_fit() -> None:
    bf = estimate_inference("llama-2-70b", "a100-80gb", 1, batch=1, prompt_len=16, gen_len=16)
    i4 = estimate_inference("llama-2-70b", "a100-80gb", 1, batch=1, prompt_len=16, gen_len=16, precision="w4a16")
    assert not bf.fits and i4.fits
    assert i4.tpot_s < bf.tpot_s / 2
    assert any("does not fit" in n for n in bf.notes)


def test_tensor_parallel_adds_allreduce_and_max_batch() -> None:
    e = estimate_inference("llama-2-7b", "a100-80gb", 8, batch=1, prompt_len=16, gen_len=16)
    assert any(x.name == "decode_tp_comm_time" for x in e.terms)
    assert e.max_batch > 100 and e.max_context > 100_000


def test_json_keys_and_energy() -> None:
    e = estimate_inference("llama-3.1-8b", "h100-sxm", 1, batch=8)
    d = json.loads(json.dumps(e.to_dict()))
    for key in ("ttft_s", "tpot_s", "throughput_tokens_per_s", "memory_per_device_bytes", "fits",
                "energy_per_token_j", "cost_per_million_tokens_usd"):
        assert key in d
    assert e.energy_per_token_j == pytest.approx(700 * 1.2 / e.throughput_tokens_per_s)


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "int2"}, r"inference precision 'int2' is not supported"),
    ({"batch": 0}, r"--batch must be a whole number >= 1"),
    ({"tp": 3, "devices": 4}, r"tp=3 does not divide --devices 4"),
    ({"tp": 3, "devices": 3}, r"tp=3 does not divide the 32 attention heads of llama-2-7b"),
    ({"pue": 0.9}, r"--pue 0.9 must be >= 1"),
])
def test_bad_inputs(kwargs: dict, message: str) -> None:
    devices = kwargs.pop("devices", 1)
    with pytest.raises(PlanError, match=message):
        estimate_inference("llama-2-7b", "a100-80gb", devices, **kwargs)


def test_calibration_decode_override(tmp_path) -> None:
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "entries": [
        {"device": "this-machine", "dtype": "bf16", "phase": "decode", "efficiency": 0.4}]}))
    a = estimate_inference("llama-2-7b", "a100-80gb", 1, batch=1, prompt_len=16, gen_len=16)
    b = estimate_inference("llama-2-7b", "a100-80gb", 1, batch=1, prompt_len=16, gen_len=16, calibration=str(cal))
    mem = [{t.name: t.value for t in e.terms}["decode_memory_time"] for e in (a, b)]
    assert mem[1] > mem[0] * 1.5 and b.tpot_s > a.tpot_s
    # the measured rate holds the fixed cost per layer: none is added on top of it
    assert {t.name: t.value for t in b.terms}["layer_overhead"] == 0.0


def test_terms_add_up() -> None:
    e = estimate_inference("llama-2-70b", "a100-80gb", 4, batch=8, prompt_len=512, gen_len=64, graphs=True)
    t = {x.name: x.value for x in e.terms}
    assert "decode_host_time" not in t
    assert t["tpot"] == pytest.approx(t["decode_linear_time"] + t["decode_attention_time"] + t["layer_overhead"]
                                      + t["decode_tp_comm_time"])
    # bandwidth-bound in both kernels at batch 8: the sum is the step's bytes at bandwidth
    assert t["decode_linear_time"] + t["decode_attention_time"] == pytest.approx(t["decode_memory_time"])
    assert t["memory_per_device"] == pytest.approx(t["weights_per_device"] + t["kv_cache_per_device"] + t["workspace"])
    assert e.request_time_s == pytest.approx(t["request_time"])


def test_small_model_decode_waits_for_the_host_on_a_gpu() -> None:
    # gpt2-124m on an H200 in eager PyTorch: 136 ops per step at 20 us each, whatever the batch
    # (hwlm bench infer measured 2.7-3.1 ms per token at batch 1-32).
    from hwlm.plan.efficiency import ops_per_forward

    spec = get_model("gpt2-124m").spec
    assert ops_per_forward(spec) == 12 * 11 + 4
    for batch in (1, 32):
        e = estimate_inference("gpt2-124m", "h200", 1, batch=batch, prompt_len=128, gen_len=64)
        t = {x.name: x.value for x in e.terms}
        assert t["decode_host_time"] == pytest.approx(136 * 20e-6)
        assert t["decode_host_time"] > t["decode_memory_time"] + t["layer_overhead"]
        assert e.tpot_s == pytest.approx(t["decode_host_time"])
        assert e.to_dict()["graphs"] is False
    # CUDA graphs replay the step: no host term, the model is bandwidth-bound again.
    g = estimate_inference("gpt2-124m", "h200", 1, batch=1, prompt_len=128, gen_len=64, graphs=True)
    tg = {x.name: x.value for x in g.terms}
    assert "decode_host_time" not in tg and "prefill_host_time" not in tg
    assert g.tpot_s == pytest.approx(tg["decode_memory_time"] + tg["layer_overhead"])
    assert g.tpot_s < 0.3 * e.tpot_s


def test_host_term_is_negligible_for_large_models_and_absent_off_gpu() -> None:
    eager = estimate_inference("llama-2-70b", "a100-80gb", 8, batch=1, prompt_len=128, gen_len=64, precision="w8a16")
    graphs = estimate_inference("llama-2-70b", "a100-80gb", 8, batch=1, prompt_len=128, gen_len=64,
                                precision="w8a16", graphs=True)
    assert graphs.tpot_s <= eager.tpot_s
    big = estimate_inference("llama-2-70b", "a100-80gb", 4, batch=64, prompt_len=2048, gen_len=64)
    assert big.ttft_s == pytest.approx(estimate_inference("llama-2-70b", "a100-80gb", 4, batch=64, prompt_len=2048,
                                                          gen_len=64, graphs=True).ttft_s)
    cpu = estimate_inference("gpt2-124m", "xeon-8480", 1, batch=1, prompt_len=128, gen_len=64)
    assert "decode_host_time" not in {x.name for x in cpu.terms}


def test_calibrated_prefill_includes_elementwise_work(tmp_path) -> None:
    # A prefill entry is an end-to-end rate: no separate element-wise term, and a launch-bound decode
    # rate (tiny efficiency) must not slow the prefill's element-wise traffic down.
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "entries": [
        {"device": "h200", "dtype": "bf16", "phase": "prefill", "efficiency": 0.5},
        {"device": "h200", "dtype": "bf16", "phase": "decode", "efficiency": 0.05}]}))
    e = estimate_inference("gpt2-124m", "h200", 1, batch=32, prompt_len=512, gen_len=64, calibration=str(cal))
    t = {x.name: x.value for x in e.terms}
    assert t["prefill_elementwise_time"] == 0.0
    assert t["prefill_compute_time"] > t["prefill_host_time"]  # 16k tokens: compute-bound
    assert e.ttft_s == pytest.approx(t["prefill_compute_time"] + 12 * 40e-6)  # + the fixed cost per layer


def test_neuron_pads_heads_instead_of_refusing() -> None:
    from hwlm.plan.inference import pad_heads
    m = get_model("llama-2-13b")
    padded, note = pad_heads(m, 12)
    assert padded.spec.n_heads == 48 and padded.spec.kv_heads == 48 and padded.spec.hd == m.spec.hd
    assert "40 -> 48" in note and pad_heads(m, 8) == (m, None)
    e = estimate_inference("llama-2-13b", "inf2", 12, batch=1, prompt_len=256, gen_len=32)
    t = {x.name: x.value for x in e.terms}
    assert t["head_padding"] == 48 and any("padded 40 -> 48" in n for n in e.notes)
    # The padded heads cost what real ones do: weights grow by the q/k/v/o share, the KV cache by 48/40.
    assert t["weights_per_device"] == pytest.approx(padded.params.total * 2.0 / 12)
    with pytest.raises(PlanError, match="tp=12 does not divide the 40 attention heads"):
        estimate_inference("llama-2-13b", "h100-sxm", 12, batch=1)


def test_compressed_formats_use_their_own_calibration_first(tmp_path) -> None:
    from hwlm.plan.efficiency import priors_for
    def cal(entries):
        p = tmp_path / f"cal{len(entries)}.json"
        p.write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "entries": entries}))
        return str(p)
    bf16 = {"device": "a100-80gb", "dtype": "bf16", "phase": "decode", "efficiency": 0.8}
    own = {"device": "a100-80gb", "dtype": "w4a16", "phase": "decode", "efficiency": 0.3}
    t = lambda e: {x.name: x.value for x in e.terms}["decode_memory_time"]  # noqa: E731
    kw = dict(batch=1, prompt_len=16, gen_len=16, precision="w4a16")
    only16 = estimate_inference("llama-2-7b", "a100-80gb", 1, calibration=cal([bf16]), **kw)
    both = estimate_inference("llama-2-7b", "a100-80gb", 1, calibration=cal([bf16, own]), **kw)
    # With its own entry the format's efficiency is used as is; with only a 16-bit one, the prior's
    # int4 kernel factor scales it.
    factor = priors_for("gpu", "bf16", weight_dtype="int4").decode_bw_eff / priors_for("gpu", "bf16").decode_bw_eff
    assert t(both) / t(only16) == pytest.approx(0.8 * factor / 0.3, rel=1e-6)


def test_decode_sums_the_weight_products_and_the_attention_each_at_its_own_bound() -> None:
    """A step's kernels run one after another (per-kernel roofline, LLM-Viewer's model_analyzer): at batch 768
    Llama 3.1 8B's products are compute-bound while its attention reads the KV cache at a few FLOPs per byte,
    so the step is their sum, longer than the larger of the step's byte and FLOP totals."""
    from hwlm.formulas import attention_flops_per_pair, forward_flops_per_token

    e = estimate_inference("llama-3.1-8b", "gaudi3", 1, batch=768, prompt_len=128, gen_len=2048, precision="fp8",
                           engine="optimum-habana")
    t = {x.name: x.value for x in e.terms}
    spec, ctx = get_model("llama-3.1-8b").spec, 128 + 2048 // 2
    rate = 768 * forward_flops_per_token(spec, ctx) / t["decode_compute_time"]
    f_att = 768 * ctx * attention_flops_per_pair(spec)
    kv = 768 * ctx * t["kv_bytes_per_token_device"]
    bw = t["decode_bytes_per_step"] / t["decode_memory_time"]
    assert t["decode_linear_time"] == pytest.approx((768 * forward_flops_per_token(spec, ctx) - f_att) / rate)
    assert t["decode_attention_time"] == pytest.approx(kv / bw)  # memory-bound: ~16 FLOPs per fp8 byte
    assert t["decode_linear_time"] > t["weights_per_device"] / bw  # compute-bound products
    assert e.tpot_s == pytest.approx(t["decode_linear_time"] + t["decode_attention_time"] + t["layer_overhead"])
    assert e.tpot_s > max(t["decode_memory_time"], t["decode_compute_time"]) + t["layer_overhead"]


def test_a_calibrated_decode_rate_keeps_the_larger_total(tmp_path) -> None:
    """bench infer's decode rate is bytes per step / the measured TPOT, the kernels' sum already inside it."""
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "entries": [
        {"device": "a100-80gb", "dtype": "bf16", "phase": "decode", "efficiency": 0.5}]}))
    e = estimate_inference("llama-3.1-8b", "a100-80gb", 1, batch=256, prompt_len=128, gen_len=1024,
                           calibration=str(cal))
    t = {x.name: x.value for x in e.terms}
    assert "decode_linear_time" not in t
    assert e.tpot_s == pytest.approx(max(t["decode_memory_time"], t["decode_compute_time"]))


def _machine_calibration(tmp_path, extra: list[dict]) -> str:
    """A this-machine calibration: measured peaks plus ``extra`` entries."""
    entries = [{"device": "this-machine", "dtype": d, "phase": "matmul", "efficiency": 1.0, "measured": 1.2e11}
               for d in ("fp32", "bf16")]
    entries += [{"device": "this-machine", "dtype": "fp32", "phase": "membw", "efficiency": 1.0, "measured": 2.7e10},
                *extra]
    p = tmp_path / f"machine{len(list(tmp_path.iterdir()))}.json"
    p.write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "device": "this-machine", "entries": entries}))
    return str(p)


def _kv_bytes(e) -> float:
    return {x.name: x for x in e.terms}["kv_elem_bytes"]


def test_hwlm_engine_on_this_machine_prices_the_fp32_kv_cache_it_keeps(tmp_path) -> None:
    # hwlm's engine keeps fp32 activations and an fp32 cache under the compressed formats (bench infer --run
    # runs them at --precision fp32); the calibration records it, and the plan prices the cache at 4 B.
    dec = {"device": "this-machine", "dtype": "w8a8", "phase": "decode", "efficiency": 0.4}
    recorded = _machine_calibration(tmp_path, [{**dec, "engine": "hwlm", "kv_dtype": "fp32"}])
    kw = dict(batch=1, prompt_len=512, gen_len=32, precision="w8a8")
    e = estimate_inference("gpt2-124m", "this-machine", 1, calibration=recorded, **kw)
    assert _kv_bytes(e).value == 4.0 and "calibration: hwlm kept its KV cache in fp32" in _kv_bytes(e).formula
    assert e.kv_cache_bytes_per_device == pytest.approx(544 * kv_cache_bytes_per_token(get_model("gpt2-124m").spec, 4))
    # an older calibration without the record: the engine's own rule, the same bytes
    old = estimate_inference("gpt2-124m", "this-machine", 1, calibration=_machine_calibration(tmp_path, [dec]), **kw)
    assert _kv_bytes(old).value == 4.0 and old.tpot_s == pytest.approx(e.tpot_s)
    # a cache recorded by another engine (onnxruntime) is not hwlm's, nor is hwlm's rule another engine's
    onnx = _machine_calibration(tmp_path, [{**dec, "engine": "onnxruntime", "kv_dtype": "bf16"}])
    assert _kv_bytes(estimate_inference("gpt2-124m", "this-machine", 1, calibration=onnx, **kw)).value == 4.0
    assert _kv_bytes(estimate_inference("gpt2-124m", "this-machine", 1, calibration=onnx, engine="hf", **kw)).value == 2.0
    # a record in 16 bits is priced at 2 B
    half = [{**dec, "engine": "hwlm", "kv_dtype": "bf16"}]
    assert _kv_bytes(estimate_inference("gpt2-124m", "this-machine", 1,
                                        calibration=_machine_calibration(tmp_path, half), **kw)).value == 2.0


def test_catalog_hardware_keeps_a_16_bit_kv_cache_under_weight_only_formats() -> None:
    # vLLM and TensorRT-LLM keep the cache in the model's dtype unless told fp8; the explain line says so.
    for precision in ("w8a16", "w4a16", "w8a8"):
        e = estimate_inference("llama-2-7b", "a100-80gb", 1, batch=4, prompt_len=1000, gen_len=24, precision=precision)
        term = _kv_bytes(e)
        assert term.value == 2.0 and "vLLM" in term.source and "TensorRT-LLM" in term.source
    assert _kv_bytes(estimate_inference("llama-2-7b", "a100-80gb", 1, precision="fp8")).value == 1.0
