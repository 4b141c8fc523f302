"""Model presets and config.json parsing: counts match transformers, names are forgiving."""

from __future__ import annotations

import json

import pytest

from hwlm.errors import PlanError
from hwlm.formulas import kv_cache_bytes_per_token
from hwlm.plan.models import SUPPORTED_MODEL_TYPES, get_model, list_models

HF_PRESETS = [m.name for m in list_models() if m.hf_config is not None]


def test_at_least_fifteen_presets_with_sources() -> None:
    models = list_models()
    assert len(models) >= 15
    assert all(m.source for m in models)
    for name in ["gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1.5b", "gpt3-175b", "llama-2-7b", "llama-2-13b",
                 "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "mistral-7b", "mixtral-8x7b",
                 "qwen2.5-7b", "qwen2.5-72b", "bert-base", "deepseek-v2-lite"]:
        assert get_model(name).name == name


def test_forgiving_names_and_unknown_name() -> None:
    assert get_model("Llama_3.1_8B").name == "llama-3.1-8b"
    assert get_model("meta-llama/Llama-2-7b").name == "llama-2-7b"
    assert get_model("GPT2").name == "gpt2-124m"
    with pytest.raises(PlanError, match=r"unknown model 'llama-3.1-9b'; closest: llama-3.1-8b"):
        get_model("llama-3.1-9b")


def test_published_totals() -> None:
    # Papers' own figures: GPT-2 124M, Llama 2 7B 6.74B, PaLM 540.35B, Mixtral 46.7B total / 12.9B active.
    assert get_model("gpt2").params.total == 124439808
    assert get_model("llama-2-7b").params.total == 6738415616
    assert abs(get_model("palm-540b").params.total / 540.35e9 - 1) < 0.001
    mix = get_model("mixtral-8x7b").params
    assert round(mix.total / 1e9, 1) == 46.7 and round(mix.active / 1e9, 1) == 12.9


def test_gqa_kv_cache_is_smaller() -> None:
    # Llama 2 70B: 80 layers x 8 KV heads x 128 x (K and V) x 2 bytes = 327,680 B/token.
    assert kv_cache_bytes_per_token(get_model("llama-2-70b").spec, 2) == 80 * 8 * 128 * 2 * 2
    assert kv_cache_bytes_per_token(get_model("llama-2-13b").spec, 2) == 40 * 40 * 128 * 2 * 2
    # MLA caches the 512-wide latent plus the 64-wide rotary key per layer.
    assert kv_cache_bytes_per_token(get_model("deepseek-v2-lite").spec, 2) == 27 * (512 + 64) * 2


def test_config_json_path(tmp_path) -> None:
    cfg = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    m = get_model(str(p))
    assert m.spec.kv_heads == 2 and m.model_type == "llama"
    assert get_model(str(tmp_path)).name == m.name


def test_config_json_errors(tmp_path) -> None:
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(PlanError, match=r"unsupported model_type 'mamba' in config.json; supported: bert, bloom"):
        get_model(str(p))
    p.write_text("{not json")
    with pytest.raises(PlanError, match="cannot read model config"):
        get_model(str(p))
    with pytest.raises(PlanError, match="does not exist"):
        get_model(str(tmp_path / "missing.json"))
    p.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    with pytest.raises(PlanError, match="lacks 'vocab_size'"):
        get_model(str(p))
    assert "deepseek_v2" in SUPPORTED_MODEL_TYPES


def _hf_counts(model) -> tuple[int, int]:
    """(total, active) parameters of the real transformers module built on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(**model.hf_config)
    auto = transformers.AutoModelForMaskedLM if model.hf_class == "masked" else transformers.AutoModelForCausalLM
    with torch.device("meta"):
        net = auto.from_config(cfg)
    total = sum(p.numel() for p in net.parameters())
    inactive = 0
    for name, mod in net.named_modules():
        if name.endswith(".experts"):  # fused (E, ...) expert tensors: unused share is (E - k) / E
            n = sum(p.numel() for p in mod.parameters())
            e, k = model.spec.n_experts, model.spec.experts_per_token
            inactive += n * (e - k) // e
    return total, total - inactive


@pytest.mark.slow
@pytest.mark.parametrize("name", HF_PRESETS)
def test_preset_matches_transformers(name: str) -> None:
    model = get_model(name)
    total, active = _hf_counts(model)
    assert model.params.total == total
    assert model.params.active == active


def test_small_moe_configs_match_transformers() -> None:
    # Fast check of the MoE/MLA formulas on tiny shapes.
    from hwlm.plan.models import Model, spec_from_hf_config
    for cfg in [
        {"model_type": "mixtral", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 48, "num_local_experts": 4, "num_experts_per_tok": 2},
        {"model_type": "deepseek_v2", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 64, "moe_intermediate_size": 16,
         "n_routed_experts": 8, "n_shared_experts": 2, "num_experts_per_tok": 3, "first_k_dense_replace": 1,
         "kv_lora_rank": 16, "q_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8},
        {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 48},
        {"model_type": "bloom", "vocab_size": 100, "hidden_size": 32, "n_layer": 2, "n_head": 4},
        {"model_type": "opt", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "ffn_dim": 64, "max_position_embeddings": 64, "word_embed_proj_dim": 32},
    ]:
        m = Model(name="t", spec=spec_from_hf_config(cfg), source="test", model_type=cfg["model_type"], seq_len=64,
                  hf_config=cfg)
        total, active = _hf_counts(m)
        assert (m.params.total, m.params.active) == (total, active), cfg["model_type"]


FRONTIER = ["deepseek-v3", "qwen3-8b", "qwen3-32b", "qwen3-30b-a3b", "qwen3-235b-a22b", "llama-4-scout",
            "llama-4-maverick", "gpt-oss-20b", "gpt-oss-120b", "mixtral-8x7b", "mixtral-8x22b", "gemma-3-1b",
            "gemma-3-4b", "gemma-3-12b", "gemma-3-27b"]


@pytest.mark.parametrize("name", [n for n in FRONTIER if n != "mixtral-8x7b"])
def test_frontier_presets_match_published_counts(name: str) -> None:
    """Total and active counts against the makers' stated figures (rounded by them; vision encoders of
    Llama 4 are in their totals, not in these text models). The exact count is checked against
    transformers on the meta device by test_preset_matches_transformers."""
    m = get_model(name)
    pub = m.published
    assert pub and m.source
    tol = 0.015 if "includes" in pub else 0.003
    assert m.params.total == pytest.approx(pub["total"], rel=tol)
    if "active" in pub:
        active = m.params.active - (m.params.embedding if pub.get("active_excludes") == "embedding" else 0)
        assert active == pytest.approx(pub["active"], rel=0.02)
        assert m.is_moe and m.params.active < m.params.total / 2


def test_deepseek_v3_question_has_an_answer() -> None:
    m = get_model("deepseek-v3")
    assert get_model("deepseek-r1") is m and m.spec.kv_lora_rank == 512
    assert get_model("Qwen/Qwen3-235B-A22B").name == "qwen3-235b-a22b"


@pytest.mark.slow
def test_new_model_types_match_transformers_on_tiny_shapes() -> None:
    from hwlm.plan.models import Model, spec_from_hf_config
    base = {"vocab_size": 100, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2}
    for cfg in [
        {**base, "model_type": "qwen3", "num_hidden_layers": 2, "head_dim": 16, "intermediate_size": 48},
        {**base, "model_type": "qwen3_moe", "num_hidden_layers": 4, "head_dim": 16, "intermediate_size": 48,
         "moe_intermediate_size": 8, "num_experts": 8, "num_experts_per_tok": 2, "mlp_only_layers": [0]},
        {**base, "model_type": "llama4_text", "num_hidden_layers": 4, "head_dim": 8, "intermediate_size": 16,
         "intermediate_size_mlp": 48, "num_local_experts": 4, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2},
        {**base, "model_type": "gpt_oss", "num_hidden_layers": 2, "head_dim": 8, "intermediate_size": 16,
         "num_local_experts": 4, "num_experts_per_tok": 2},
        {**base, "model_type": "gemma3_text", "num_hidden_layers": 2, "head_dim": 16, "intermediate_size": 48},
        {**base, "model_type": "deepseek_v3", "num_hidden_layers": 3, "num_key_value_heads": 4, "intermediate_size": 64,
         "moe_intermediate_size": 16, "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
         "first_k_dense_replace": 1, "n_group": 2, "topk_group": 1, "kv_lora_rank": 16, "q_lora_rank": 24,
         "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8},
    ]:
        m = Model(name="t", spec=spec_from_hf_config(cfg), source="test", model_type=cfg["model_type"], seq_len=64,
                  hf_config=cfg)
        assert (m.params.total, m.params.active) == _hf_counts(m), cfg["model_type"]
