"""Efficiency priors and calibration files."""

from __future__ import annotations

import json

import pytest

from hwlm.errors import PlanError
from hwlm.formulas import ArchSpec, forward_flops_per_token
from hwlm.plan.efficiency import Calibration, gemm_shapes, kernels_per_step, load_calibration, priors_for


def _write(tmp_path, data) -> str:
    p = tmp_path / "cal.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def test_priors_depend_on_kind_dtype_and_balance() -> None:
    a100 = priors_for("gpu", "bf16", 312e12, 2.039e12)
    h100 = priors_for("gpu", "bf16", 989e12, 3.35e12)
    h100_fp8 = priors_for("gpu", "fp8", 1979e12, 3.35e12)
    assert a100.matmul_eff > h100.matmul_eff > h100_fp8.matmul_eff  # higher ridge point, lower share of peak
    assert priors_for("gpu", "bf16", weight_dtype="int4").decode_bw_eff < priors_for("gpu", "bf16").decode_bw_eff
    assert priors_for("cpu", "fp32").matmul_eff != priors_for("gpu", "fp32").matmul_eff
    assert priors_for("fpga", "fp16") == priors_for("gpu", "fp16")  # unknown kinds take the GPU prior
    assert a100.source


def test_load_calibration_roundtrip(tmp_path) -> None:
    cal = load_calibration(_write(tmp_path, {"version": 1, "kind": "hwlm-calibration", "machine": {}, "entries": [
        {"device": "H100-SXM", "dtype": "bf16", "phase": "matmul", "efficiency": 0.7, "measured": 6.9e14,
         "unit": "FLOP/s", "source": "bench record x.json, 2026-01-01"}]}))
    assert isinstance(cal, Calibration)
    e = cal.lookup("h100-sxm", "bf16", "matmul")
    assert e is not None and e.efficiency == 0.7 and "bench record" in e.source
    assert cal.lookup("h100-sxm", "bf16", "decode") is None
    assert load_calibration(None) is None


@pytest.mark.parametrize("data, message", [
    ("{nope", r"is not valid JSON"),
    ({"version": 1, "kind": "other", "entries": []}, r"is not an hwlm calibration"),
    ({"version": 2, "kind": "hwlm-calibration", "entries": []}, r"has version 2; this hwlm reads version 1"),
    ({"version": 1, "kind": "hwlm-calibration", "entries": []}, r"has no entries"),
    ({"version": 1, "kind": "hwlm-calibration", "entries": [{"device": "x", "dtype": "bf16", "phase": "train"}]},
     r"entry 0 lacks 'efficiency'"),
    ({"version": 1, "kind": "hwlm-calibration",
      "entries": [{"device": "x", "dtype": "bf16", "phase": "warp", "efficiency": 0.5}]}, r"has phase 'warp'"),
    ({"version": 1, "kind": "hwlm-calibration",
      "entries": [{"device": "x", "dtype": "bf16", "phase": "train", "efficiency": 3}]}, r"has efficiency 3"),
])
def test_bad_calibration_files(tmp_path, data, message) -> None:
    with pytest.raises(PlanError, match=message):
        load_calibration(_write(tmp_path, data))


def test_missing_calibration_file(tmp_path) -> None:
    with pytest.raises(PlanError, match=r"calibration file .*missing.json does not exist"):
        load_calibration(tmp_path / "missing.json")


@pytest.mark.parametrize("spec", [
    ArchSpec(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_positions=64),
    ArchSpec(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336, mlp="swiglu",
             norm="rmsnorm", pos="rope", tied_embeddings=False, qkv_bias=False, out_bias=False, mlp_bias=False),
])
def test_gemm_shapes_carry_the_forward_flops(spec: ArchSpec) -> None:
    tokens, seq = 4096.0, 1024
    flops = sum(g.flops * g.count for g in gemm_shapes(spec, tokens, seq))
    assert flops == pytest.approx(tokens * forward_flops_per_token(spec, seq))


def test_kernels_per_step_grow_with_layers_features_and_autocast() -> None:
    gpt = ArchSpec(vocab_size=2048, d_model=128, n_layers=4, n_heads=4)
    llama = ArchSpec(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, mlp="swiglu", norm="rmsnorm", pos="rope")
    assert kernels_per_step(gpt) == 4 * 29 + 49
    assert kernels_per_step(llama) == 4 * 85 + 49
    assert kernels_per_step(gpt, autocast=True) > kernels_per_step(gpt)
    deeper = ArchSpec(vocab_size=2048, d_model=128, n_layers=8, n_heads=4)
    assert kernels_per_step(deeper) - kernels_per_step(gpt) == 4 * 29


def test_op_overhead_priors_have_a_source() -> None:
    from hwlm.plan.efficiency import OP_OVERHEAD_SOURCE
    assert priors_for("cpu", "fp32").op_overhead_s > priors_for("tpu", "bf16").op_overhead_s > 0
    assert "horace.io" in OP_OVERHEAD_SOURCE


def test_mxu_fill_pads_k_and_n_to_the_array() -> None:
    """A 256-wide array half-fills the attention products of 128-dim heads and fully fills the rest."""
    from hwlm.formulas import ArchSpec
    from hwlm.plan.efficiency import gemm_shapes, mxu_utilization
    spec = ArchSpec(vocab_size=32768, d_model=4096, n_layers=2, n_heads=32)  # head_dim 128, all else x256
    gemms = gemm_shapes(spec, 4096, 4096)
    att = sum(g.flops * g.count for g in gemms[-2:])
    lin = sum(g.flops * g.count for g in gemms[:-2])
    assert mxu_utilization(spec, 4096, 4096, 256) == pytest.approx((lin + att) / (lin + att / 0.5))
    assert mxu_utilization(spec, 4096, 4096, 128) == pytest.approx(1.0)
    odd = ArchSpec(vocab_size=32000, d_model=4000, n_layers=2, n_heads=32)  # 4000 = 31.25 x 128
    assert mxu_utilization(odd, 4096, 4096, 128) < 1.0


def test_tpu_training_divides_its_matmul_time_by_the_mxu_fill() -> None:
    from dataclasses import replace
    from hwlm.plan import estimate_training, get_device
    v6e = get_device("tpu-v6e")
    kw = dict(tokens=1e9, devices=256, seq_len=8192, framework="maxtext", find_smallest=False)
    e = estimate_training("llama-3.1-8b", hardware=v6e, **kw)
    flat = estimate_training("llama-3.1-8b", hardware=replace(v6e, matrix_unit=None), **kw)
    terms = {t.name: t.value for t in e.terms}
    fill = terms["mxu_fill"]
    assert 0.5 < fill < 1.0 and "mxu_fill" not in {t.name for t in flat.terms}
    assert terms["matmul_time"] == pytest.approx({t.name: t.value for t in flat.terms}["matmul_time"] / fill)
    assert get_device("h100-sxm").matrix_unit is None and get_device("tpu-v5p").matrix_unit == 128
