"""Frameworks and engines: where they run, what each changes, and that the default says what it assumed."""

from __future__ import annotations

import pytest

from hwlm.cli import main
from hwlm.errors import PlanError
from hwlm.plan import ENGINES, FRAMEWORKS, estimate_inference, estimate_training, get_device
from hwlm.plan.software import default_engine, default_framework, get_engine, get_framework


def test_every_stack_is_sourced_and_the_issue_names_exist() -> None:
    assert set(FRAMEWORKS) == {"megatron", "deepspeed", "fsdp", "torchtitan", "maxtext", "llm-foundry", "nemo", "hwlm"}
    assert set(ENGINES) == {"vllm", "tensorrt-llm", "tensorrt-llm-0.7", "gpt-fast", "llama.cpp", "optimum-habana", "hf",
                            "hwlm"}
    for s in (*FRAMEWORKS.values(), *ENGINES.values()):
        assert s.source and 0 < s.elementwise and 0 <= s.tp_overlap < 1


def test_bad_combinations_are_one_line() -> None:
    tpu = get_device("tpu-v5e")
    with pytest.raises(PlanError, match=r"TensorRT-LLM does not run on tpu-v5e .* use vllm"):
        get_engine("tensorrt-llm", tpu)
    with pytest.raises(PlanError, match=r"does not run on tpu-v5e .* use maxtext or hwlm"):
        get_framework("nemo", tpu)
    with pytest.raises(PlanError, match="unknown engine 'sglang'; choose one of vllm"):
        get_engine("sglang", tpu)
    assert get_engine("TRT-LLM", get_device("h100-sxm")).id == "tensorrt-llm"


def test_defaults_follow_the_hardware() -> None:
    assert default_framework(get_device("tpu-v5p")).id == "maxtext"
    assert default_framework(get_device("h100-sxm")).id == "megatron"
    assert default_engine(get_device("h100-sxm")).id == "hwlm"
    assert default_engine(get_device("h100-sxm"), serving=True).id == "vllm"
    e = estimate_training("gpt2", 1e9, "h100-sxm", 8)
    assert e.framework == "megatron" and any("assumed" in n for n in e.notes)


def test_fusion_scales_only_the_elementwise_term() -> None:
    def terms(fw):
        e = estimate_training("llama-2-7b", 1e10, "h100-sxm", 8, framework=fw, tp=1, pp=1)
        return {t.name: t.value for t in e.terms}
    ref, fused = terms("megatron"), terms("torchtitan")
    ratio = FRAMEWORKS["torchtitan"].elementwise / FRAMEWORKS["megatron"].elementwise
    assert fused["elementwise_time"] == pytest.approx(ref["elementwise_time"] * ratio)
    assert fused["matmul_time"] == pytest.approx(ref["matmul_time"])


def test_tp_overlap_hides_its_share() -> None:
    a = estimate_training("llama-2-70b", 1e10, "h100-sxm", 64, framework="megatron", tp=8, pp=1, zero_stage=3)
    b = estimate_training("llama-2-70b", 1e10, "h100-sxm", 64, framework="nemo", tp=8, pp=1, zero_stage=3)
    ta = next(t.value for t in a.terms if t.name == "tp_comm_time")
    tb = next(t.value for t in b.terms if t.name == "tp_comm_time")
    assert tb == pytest.approx(ta * (1 - FRAMEWORKS["nemo"].tp_overlap))


def test_cuda_graphs_belong_to_the_engine() -> None:
    kw = dict(batch=1, prompt_len=128, gen_len=64)
    eager = estimate_inference("gpt2-124m", "h200", 1, engine="hf", **kw)
    vllm = estimate_inference("gpt2-124m", "h200", 1, engine="vllm", **kw)
    forced = estimate_inference("gpt2-124m", "h200", 1, engine="hf", cuda_graphs=True, **kw)
    assert vllm.graphs and not eager.graphs and forced.graphs
    assert not any(t.name == "decode_host_time" for t in vllm.terms)
    assert any(t.name == "decode_host_time" for t in eager.terms)
    assert vllm.tpot_s < eager.tpot_s


def test_prefill_attention_in_the_engine_kernel() -> None:
    # At a long prompt the attention share of prefill is large; a faster attention kernel only shrinks it.
    kw = dict(prompt_len=4000, gen_len=16, cuda_graphs=True)
    trt = {x.name: x.value for x in estimate_inference("llama-2-7b", "h100-sxm", 1, engine="tensorrt-llm", **kw).terms}
    ref = {x.name: x.value for x in estimate_inference("llama-2-7b", "h100-sxm", 1, engine="vllm", **kw).terms}
    flops, att = ref["prefill_flops"] - ref["prefill_logits_skipped"], ref["prefill_attention_flops"]
    assert 0.1 * flops < att < flops
    k = ENGINES["tensorrt-llm"].attention / ENGINES["vllm"].attention
    assert trt["prefill_compute_time"] / ref["prefill_compute_time"] == pytest.approx((flops - att + att / k) / flops)


def test_cli_engine_and_framework(capsys) -> None:
    assert main(["plan", "infer", "--model", "gpt2", "--hardware", "tpu-v5e", "--engine", "tensorrt-llm"]) == 1
    err = capsys.readouterr().err.strip()
    assert "TensorRT-LLM does not run on tpu-v5e" in err and len(err.splitlines()) == 1
    assert main(["plan", "train", "--model", "gpt2", "--tokens", "1e9", "--hardware", "h100-sxm",
                 "--framework", "torchtitan", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "framework" in out and "torchtitan" in out


def test_the_framework_selects_the_activation_count() -> None:
    """Megatron-style stacks (16-bit weights, FlashAttention) keep Korthikanti et al.'s count, hwlm's own loop
    its autocast model's count; on TPUs MaxText the former, and this machine defaults to hwlm's."""
    from dataclasses import replace
    from hwlm.formulas import ACTIVATION_COUNTS
    assert {s.activations for s in FRAMEWORKS.values()} <= set(ACTIVATION_COUNTS)
    assert [s.id for s in FRAMEWORKS.values() if s.activations == "hwlm"] == ["hwlm"]
    kw = dict(seq_len=4096, global_batch=64, tp=1, pp=1, zero_stage=3, recompute="selective", micro_batch=1)
    mt = estimate_training("llama-2-7b", 1e9, "tpu-v5p", 64, framework="maxtext", **kw)
    own = estimate_training("llama-2-7b", 1e9, "tpu-v5p", 64, framework="hwlm", **kw)
    assert own.memory.activations > 1.5 * mt.memory.activations
    local = replace(get_device("h100-sxm"), vendor="local")
    assert default_framework(local).id == "hwlm"


def test_pre_xqa_tensorrt_llm_reads_the_kv_cache_once_per_query_head() -> None:
    """Llama 2 70B has 64 query heads over 8 KV heads: the masked-MHA engine's decode step reads each KV byte
    8 times, the XQA one once; the weights read and everything else are the same."""
    from hwlm.plan import estimate_inference
    from hwlm.plan.inference import kv_read_factor
    from hwlm.plan.models import get_model
    m = get_model("llama-2-70b")
    assert kv_read_factor(m, ENGINES["tensorrt-llm-0.7"])[0] == 64 / 8
    assert kv_read_factor(m, ENGINES["tensorrt-llm"])[0] == 1.0
    assert kv_read_factor(get_model("llama-2-7b"), ENGINES["tensorrt-llm-0.7"])[0] == 1.0  # MHA: nothing to share
    kw = dict(tp=4, batch=64, prompt_len=2048, gen_len=2048, precision="fp8")
    old = estimate_inference("llama-2-70b", "h100-sxm", 4, engine="tensorrt-llm-0.7", **kw)
    new = estimate_inference("llama-2-70b", "h100-sxm", 4, engine="tensorrt-llm", **kw)
    term = {t.name: t.value for t in old.terms}
    kv = 64 * (2048 + 2048 / 2) * term["kv_bytes_per_token_device"]
    diff = term["decode_bytes_per_step"] - {t.name: t.value for t in new.terms}["decode_bytes_per_step"]
    assert diff == pytest.approx(kv * (8 - 1))
    assert get_engine("tensorrt-llm-0.5", get_device("h100-sxm")).id == "tensorrt-llm-0.7"


def test_last_token_logits_drop_the_output_layer_of_the_other_prompt_tokens() -> None:
    """An engine that samples after the last prompt token only (vLLM, TensorRT-LLM, optimum-habana's
    --trim_logits) runs the output layer once per sequence in prefill; HF generate runs it on every token."""
    from hwlm.formulas import lm_head_flops_per_token
    from hwlm.plan.models import get_model
    kw = dict(batch=4, prompt_len=1000, gen_len=8, cuda_graphs=True)
    hf = {t.name: t.value for t in estimate_inference("llama-3.1-8b", "h100-sxm", 1, engine="hf", **kw).terms}
    vl = {t.name: t.value for t in estimate_inference("llama-3.1-8b", "h100-sxm", 1, engine="vllm", **kw).terms}
    skipped = 4 * 999 * lm_head_flops_per_token(get_model("llama-3.1-8b").spec)
    assert "prefill_logits_skipped" not in hf and vl["prefill_logits_skipped"] == pytest.approx(skipped)
    assert skipped == pytest.approx(4 * 999 * 2 * 128256 * 4096)
    assert vl["prefill_compute_time"] / hf["prefill_compute_time"] == pytest.approx(
        (hf["prefill_flops"] - skipped) / hf["prefill_flops"])
    assert all(ENGINES[e].last_token_logits for e in ("vllm", "tensorrt-llm", "tensorrt-llm-0.7", "optimum-habana"))
    assert not ENGINES["hf"].last_token_logits


def test_optimum_habana_runs_on_gaudi_only() -> None:
    assert get_engine("optimum-habana", get_device("gaudi2")).id == "optimum-habana"
    assert get_engine("habana", get_device("gaudi3")).id == "optimum-habana"
    with pytest.raises(PlanError, match=r"does not run on h100-sxm .* use vllm"):
        get_engine("optimum-habana", get_device("h100-sxm"))
    e = estimate_inference("llama-3.1-8b", "gaudi2", 1, engine="optimum-habana", batch=8, prompt_len=128, gen_len=16)
    assert e.engine == "optimum-habana" and e.graphs
