"""Model shapes for the planner: built-in presets (TOML data) and Hugging Face ``config.json`` files.

A preset stores the model's Hugging Face config fields verbatim (so a test can build the
real module on the meta device and compare parameter counts) plus a source for every
figure; models without a ``transformers`` class (PaLM) store :class:`ArchSpec` fields.
Everything ends up as one :class:`hwlm.formulas.ArchSpec`, counted by ``hwlm.formulas``.
"""

from __future__ import annotations

import difflib
import math
import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from hwlm.errors import PlanError
from hwlm.formulas import ArchSpec, ParamCount, param_count

__all__ = ["Model", "get_model", "pad_heads", "PADS_HEADS", "PAD_SOURCE", "list_models", "spec_from_hf_config", "SUPPORTED_MODEL_TYPES",
           "normalize_name", "trainable_model"]

_PRESET_DIR = Path(__file__).with_name("presets")


@dataclass(frozen=True)
class Model:
    """A model the planner can reason about."""

    name: str
    spec: ArchSpec
    source: str                       # where the shape comes from (paper / config URL or file path)
    model_type: str                   # Hugging Face model_type, or "arch" for direct ArchSpec presets
    seq_len: int                      # default training context length (from the paper or config)
    description: str = ""
    hf_config: dict[str, Any] | None = None   # HF config fields, when the model has a transformers class
    hf_class: str = "causal"          # "causal" (AutoModelForCausalLM) or "masked" (AutoModelForMaskedLM)
    aliases: tuple[str, ...] = field(default_factory=tuple)
    published: dict[str, Any] | None = None   # the maker's stated counts (total, active), for comparison

    @cached_property
    def params(self) -> ParamCount:
        return param_count(self.spec)

    @property
    def is_moe(self) -> bool:
        return self.spec.n_experts > 1


def normalize_name(name: str) -> str:
    """Forgiving name form: lower-case, dashes for spaces/underscores, org prefix dropped."""
    n = name.strip().lower().replace("_", "-").replace(" ", "-")
    return n.rsplit("/", 1)[-1]


# --- Hugging Face config.json -> ArchSpec -------------------------------------------------

def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def _need(cfg: dict[str, Any], *keys: str) -> Any:
    v = _get(cfg, *keys)
    if v is None:
        raise PlanError(f"config.json of model_type {cfg.get('model_type')!r} lacks {keys[0]!r}; "
                        "pass a complete Hugging Face config.json")
    return v


def _gpt2(c: dict[str, Any]) -> ArchSpec:
    d = _need(c, "n_embd", "hidden_size")
    return ArchSpec(vocab_size=_need(c, "vocab_size"), d_model=d, n_layers=_need(c, "n_layer", "num_hidden_layers"),
                    n_heads=_need(c, "n_head", "num_attention_heads"), d_ff=_get(c, "n_inner", default=4 * d),
                    max_positions=_get(c, "n_positions", "max_position_embeddings", default=1024),
                    tied_embeddings=_get(c, "tie_word_embeddings", default=True))


def _llama_like(c: dict[str, Any], qkv_bias: bool = False, moe: bool = False) -> ArchSpec:
    h = _need(c, "num_attention_heads")
    kw: dict[str, Any] = {}
    if moe:  # Mixtral: every layer's MLP is a set of routed experts of width intermediate_size
        kw = dict(n_experts=_need(c, "num_local_experts"), experts_per_token=_need(c, "num_experts_per_tok"))
    return ArchSpec(vocab_size=_need(c, "vocab_size"), d_model=_need(c, "hidden_size"),
                    n_layers=_need(c, "num_hidden_layers"), n_heads=h,
                    n_kv_heads=_get(c, "num_key_value_heads", default=h), head_dim=_get(c, "head_dim"),
                    d_ff=_need(c, "intermediate_size"), mlp="swiglu", norm="rmsnorm", pos="rope",
                    max_positions=_get(c, "max_position_embeddings", default=4096),
                    tied_embeddings=_get(c, "tie_word_embeddings", default=False),
                    qkv_bias=qkv_bias or bool(_get(c, "attention_bias", default=False)),
                    out_bias=bool(_get(c, "attention_bias", default=False)),
                    mlp_bias=bool(_get(c, "mlp_bias", default=False)), **kw)


def _bert(c: dict[str, Any]) -> ArchSpec:
    d, v = _need(c, "hidden_size"), _need(c, "vocab_size")
    # BertForMaskedLM outside the blocks: token-type table, embedding LayerNorm,
    # MLM transform (dense + LayerNorm) and the decoder bias (decoder weight tied to embeddings).
    extra = _get(c, "type_vocab_size", default=2) * d + 2 * d + (d * d + d) + 2 * d + v
    return ArchSpec(vocab_size=v, d_model=d, n_layers=_need(c, "num_hidden_layers"),
                    n_heads=_need(c, "num_attention_heads"), d_ff=_need(c, "intermediate_size"),
                    max_positions=_get(c, "max_position_embeddings", default=512), causal=False,
                    extra_params=extra, final_norm=False)


def _opt(c: dict[str, Any]) -> ArchSpec:
    d = _need(c, "hidden_size")
    proj = _get(c, "word_embed_proj_dim", default=d)
    extra = 2 * d * proj if proj != d else 0  # project_in / project_out (OPT-350m only)
    return ArchSpec(vocab_size=_need(c, "vocab_size"), d_model=d, n_layers=_need(c, "num_hidden_layers"),
                    n_heads=_need(c, "num_attention_heads"), d_ff=_need(c, "ffn_dim"),
                    # OPT's learned position table has 2 extra rows (padding offset).
                    max_positions=_get(c, "max_position_embeddings", default=2048) + 2,
                    extra_params=extra, final_norm=bool(_get(c, "do_layer_norm_before", default=True)),
                    tied_embeddings=_get(c, "tie_word_embeddings", default=True))


def _bloom(c: dict[str, Any]) -> ArchSpec:
    d = _need(c, "hidden_size", "n_embed")
    # ALiBi positions (no table); a LayerNorm right after the word embeddings.
    return ArchSpec(vocab_size=_need(c, "vocab_size"), d_model=d, n_layers=_need(c, "n_layer", "num_hidden_layers"),
                    n_heads=_need(c, "n_head", "num_attention_heads"), pos="none", extra_params=2 * d,
                    tied_embeddings=_get(c, "tie_word_embeddings", default=True))


def _deepseek(c: dict[str, Any]) -> ArchSpec:
    h = _need(c, "num_attention_heads")
    n_layers = _need(c, "num_hidden_layers")
    return ArchSpec(vocab_size=_need(c, "vocab_size"), d_model=_need(c, "hidden_size"), n_layers=n_layers,
                    n_heads=h, n_kv_heads=h, head_dim=_need(c, "qk_nope_head_dim"),
                    d_ff=_need(c, "intermediate_size"), mlp="swiglu", norm="rmsnorm", pos="rope",
                    max_positions=_get(c, "max_position_embeddings", default=4096),
                    tied_embeddings=_get(c, "tie_word_embeddings", default=False),
                    qkv_bias=bool(_get(c, "attention_bias", default=False)),
                    out_bias=bool(_get(c, "attention_bias", default=False)), mlp_bias=False,
                    n_experts=_get(c, "n_routed_experts", default=1), experts_per_token=_get(c, "num_experts_per_tok", default=1),
                    moe_d_ff=_get(c, "moe_intermediate_size"), n_shared_experts=_get(c, "n_shared_experts", default=0),
                    first_dense_layers=_get(c, "first_k_dense_replace", default=0),
                    kv_lora_rank=_need(c, "kv_lora_rank"), q_lora_rank=_get(c, "q_lora_rank", default=0) or 0,
                    qk_rope_head_dim=_need(c, "qk_rope_head_dim"), v_head_dim=_need(c, "v_head_dim"))


def _qk_norm(c: dict[str, Any], spec: ArchSpec) -> int:
    """Per-head RMSNorm weights on queries and keys (Qwen3, Gemma 3): 2 x head_dim per layer."""
    return spec.n_layers * 2 * spec.hd


def _qwen3(c: dict[str, Any]) -> ArchSpec:
    spec = _llama_like(c)
    return replace(spec, extra_params=_qk_norm(c, spec))


def _qwen3_moe(c: dict[str, Any]) -> ArchSpec:
    """Qwen3-MoE: a layer is sparse unless listed in mlp_only_layers or off the decoder_sparse_step
    stride (HF Qwen3MoeDecoderLayer); routed experts of width moe_intermediate_size, no shared expert."""
    spec = _llama_like(c)
    L, step = spec.n_layers, int(_get(c, "decoder_sparse_step", default=1))
    only = set(_get(c, "mlp_only_layers", default=[]) or [])
    n_moe = sum(1 for i in range(L) if i not in only and (i + 1) % step == 0)
    return replace(spec, n_experts=_need(c, "num_experts"), experts_per_token=_need(c, "num_experts_per_tok"),
                   moe_d_ff=_need(c, "moe_intermediate_size"), first_dense_layers=L - n_moe,
                   extra_params=_qk_norm(c, spec))


def _llama4(c: dict[str, Any]) -> ArchSpec:
    """Llama 4 text model: MoE layers every interleave_moe_layer_step (or the listed moe_layers), each with
    routed experts of intermediate_size plus one shared expert; dense layers of intermediate_size_mlp. The
    queries/keys' L2 norm has no weights. Layer order does not change the counts, so the dense layers are
    counted as leading ones."""
    c = dict(c.get("text_config") or c)
    L, step = _need(c, "num_hidden_layers"), int(_get(c, "interleave_moe_layer_step", default=1))
    moe = _get(c, "moe_layers") or list(range(step - 1, L, step))
    spec = _llama_like({**c, "intermediate_size": _need(c, "intermediate_size_mlp")})
    return replace(spec, n_experts=_need(c, "num_local_experts"), experts_per_token=_need(c, "num_experts_per_tok"),
                   moe_d_ff=_need(c, "intermediate_size"), n_shared_experts=1, first_dense_layers=L - len(moe))


def _gpt_oss(c: dict[str, Any]) -> ArchSpec:
    """gpt-oss: biased attention with a learned sink logit per head, every layer MoE with biased experts
    and a biased router (HF GptOssAttention / GptOssMLP)."""
    spec = _llama_like({**c, "attention_bias": True, "mlp_bias": True})
    e = _need(c, "num_local_experts")
    return replace(spec, n_experts=e, experts_per_token=_need(c, "num_experts_per_tok"),
                   extra_params=spec.n_layers * (e + spec.n_heads))


def _gemma3(c: dict[str, Any]) -> ArchSpec:
    """Gemma 3 text model: GeGLU MLP (three matrices), four RMSNorms per layer (pre/post attention and
    feed-forward), q/k norms, tied embeddings."""
    c = dict(c.get("text_config") or c)
    spec = _llama_like({**c, "tie_word_embeddings": _get(c, "tie_word_embeddings", default=True)})
    return replace(spec, extra_params=_qk_norm(c, spec) + spec.n_layers * 2 * spec.d_model)


_CONVERTERS = {
    "gpt2": _gpt2, "llama": _llama_like, "mistral": _llama_like,
    "mixtral": lambda c: _llama_like(c, moe=True), "qwen2": lambda c: _llama_like(c, qkv_bias=True),
    "bert": _bert, "opt": _opt, "bloom": _bloom, "deepseek_v2": _deepseek, "deepseek_v3": _deepseek,
    "qwen3": _qwen3, "qwen3_moe": _qwen3_moe, "llama4_text": _llama4, "llama4": _llama4, "gpt_oss": _gpt_oss,
    "gemma3_text": _gemma3, "gemma3": _gemma3,
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_CONVERTERS))


def spec_from_hf_config(cfg: dict[str, Any]) -> ArchSpec:
    """Turn a Hugging Face ``config.json`` dict into an :class:`ArchSpec`."""
    mt = cfg.get("model_type")
    if mt not in _CONVERTERS:
        raise PlanError(f"unsupported model_type {mt!r} in config.json; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return _CONVERTERS[mt](cfg)


def _seq_len_of(cfg: dict[str, Any]) -> int:
    # Default training context: the model's own window, capped at 4096 (long windows are
    # usually reached by a short context-extension phase, not pre-training).
    n = _get(cfg, "n_positions", "max_position_embeddings", "seq_length", default=2048)
    return int(min(n, 4096))


def _from_config_file(path: Path) -> Model:
    if path.is_dir():
        path = path / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"model config file {path} does not exist; pass a preset name or a config.json path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"cannot read model config {path}: {exc}; pass a valid Hugging Face config.json") from None
    if not isinstance(cfg, dict):
        raise PlanError(f"model config {path} is not a JSON object; pass a Hugging Face config.json")
    spec = spec_from_hf_config(cfg)
    return Model(name=path.parent.name or path.stem, spec=spec, source=str(path), model_type=cfg["model_type"],
                 seq_len=_seq_len_of(cfg), hf_config=cfg,
                 hf_class="masked" if cfg["model_type"] == "bert" else "causal")


def _preset(name: str, entry: dict[str, Any]) -> Model:
    arch_fields = {f.name for f in fields(ArchSpec)}
    if "config" in entry:
        cfg = dict(entry["config"])
        for key in entry.get("null_fields", ()):  # TOML has no null; e.g. DeepSeek's q_lora_rank = None
            cfg[key] = None
        spec, mt = spec_from_hf_config(cfg), cfg["model_type"]
    else:
        bad = set(entry["arch"]) - arch_fields
        if bad:
            raise PlanError(f"preset {name}: unknown arch fields {sorted(bad)}")
        spec, mt, cfg = ArchSpec(**entry["arch"]), "arch", None
    return Model(name=name, spec=spec, source=entry["source"], model_type=mt,
                 seq_len=int(entry.get("seq_len", _seq_len_of(cfg or {}))), description=entry.get("description", ""),
                 hf_config=cfg, hf_class=entry.get("hf_class", "causal"), aliases=tuple(entry.get("aliases", ())),
                 published=entry.get("published"))


@lru_cache(maxsize=1)
def _presets() -> dict[str, Model]:
    out: dict[str, Model] = {}
    for f in sorted(_PRESET_DIR.glob("*.toml")):
        with f.open("rb") as fh:
            for name, entry in tomllib.load(fh).items():
                if not entry.get("source"):
                    raise PlanError(f"preset {name} in {f.name} has no source; every figure needs one")
                out[name] = _preset(name, entry)
    return out


def list_models() -> list[Model]:
    """All built-in presets, sorted by name."""
    return sorted(_presets().values(), key=lambda m: m.name)


def get_model(name_or_path: str | Model) -> Model:
    """A preset by (forgiving) name, or a Hugging Face ``config.json`` (file or folder) path."""
    if isinstance(name_or_path, Model):
        return name_or_path
    p = Path(name_or_path)
    if name_or_path.endswith(".json") or p.is_dir() and (p / "config.json").exists():
        return _from_config_file(p)
    presets = _presets()
    index = {normalize_name(m.name): m for m in presets.values()}
    for m in presets.values():
        for a in m.aliases:
            index.setdefault(normalize_name(a), m)
    key = normalize_name(name_or_path)
    if key in index:
        return index[key]
    trained = trainable_model(name_or_path)
    if trained is not None:
        return trained
    close = difflib.get_close_matches(key, list(index), n=4, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "see `hwlm plan models`"
    raise PlanError(f"unknown model {name_or_path!r}; {hint} (or pass a config.json path)")


def trainable_model(name: str, **overrides: Any) -> Model | None:
    """The shape of one of hwlm's own trainable presets (``debug``, ``tiny``, ``mid``: what
    ``hwlm train`` and ``hwlm bench`` build), with field overrides (``vocab_size``,
    ``block_size``); None when ``name`` is not one. ``hwlm.model.config`` is torch-free."""
    from hwlm.model.config import PRESETS, ModelConfig

    if name not in PRESETS:
        return None
    cfg = ModelConfig.from_name(name, **overrides)
    return Model(name=name, spec=cfg.to_arch(), source=f"hwlm.model.config preset {name!r}",
                 model_type="hwlm", seq_len=cfg.block_size)


# Vendors whose compiler pads the attention heads up to a multiple of the tensor-parallel degree instead of
# refusing: AWS Neuron (transformers-neuronx / NxD Inference pad heads and replicate KV heads).
PADS_HEADS = ("aws",)
PAD_SOURCE = ("AWS Neuron SDK, transformers-neuronx / NxD Inference: when tp_degree does not divide the attention "
              "heads, the heads (and their q/k/v/o weights) are padded with zeros up to a multiple of it")


def pad_heads(m: Model, tp: int) -> tuple[Model, str | None]:
    """The model as a Neuron device runs it under ``tp``: heads padded to a multiple of tp (zeros that still
    cost memory, FLOPs and KV cache), and a note; unchanged when tp divides the heads."""
    spec = m.spec
    if spec.n_heads % tp == 0:
        return m, None
    padded = math.ceil(spec.n_heads / tp) * tp
    kv = padded if spec.kv_heads == spec.n_heads else spec.kv_heads
    new = replace(spec, n_heads=padded, n_kv_heads=kv, head_dim=spec.hd)
    note = (f"heads padded {spec.n_heads} -> {padded} for tp={tp} (Neuron pads to a multiple of the tp degree): "
            f"{padded / spec.n_heads - 1:.0%} more attention FLOPs, weights and KV cache")
    return replace(m, spec=new, name=m.name), note
