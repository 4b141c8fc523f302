"""Export an hwlm model to a Hugging Face ``transformers`` folder.

The folder loads with ``AutoModelForCausalLM.from_pretrained(folder)`` (offline, no code
from hwlm) as ``GPT2LMHeadModel`` (gpt2 flavour) or ``LlamaForCausalLM`` (llama flavour), and
with ``AutoTokenizer.from_pretrained(folder)`` as a ``PreTrainedTokenizerFast``. Logits match
hwlm's to float32 round-off (tested).

The mapping is a renaming plus three layout facts:

* HF GPT-2 uses ``Conv1D`` layers, whose weights are stored (in, out): hwlm's ``nn.Linear``
  weights (out, in) are transposed.
* HF GPT-2 always has biases (and LayerNorm biases); a gpt2-flavour model built with
  ``bias=False`` is written with zero biases, which computes the same function.
* hwlm's fused q/k/v and gate/up matrices are split into HF's separate projections. hwlm's
  rotary positions use HF Llama's half-split (``rotate_half``) convention, so no
  permutation of q/k rows is needed.

Folder contents: ``config.json``, ``model.safetensors``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
``hwlm_model_config.json`` (the hwlm config, for provenance). Written atomically.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from hwlm.config import to_dict
from hwlm.errors import CheckpointError, DataError
from hwlm.io import atomic_dir, atomic_write_json
from hwlm.model.config import ModelConfig
from hwlm.model.transformer import Transformer

__all__ = ["export_hf", "hf_state_dict", "hf_config", "EOT_TOKEN"]

EOT_TOKEN = "<|endoftext|>"


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu").contiguous()


def _gpt2_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {"transformer.wte.weight": _t(sd["wte.weight"]),
                                    "transformer.wpe.weight": _t(sd["wpe.weight"])}

    def bias(key: str, n: int) -> torch.Tensor:
        # HF GPT-2 always has biases; a bias-free hwlm model is the same function with zeros.
        return _t(sd[key]) if key in sd else torch.zeros(n, dtype=sd["wte.weight"].dtype)

    C = cfg.n_embd
    for i in range(cfg.n_layer):
        src, dst = f"h.{i}.", f"transformer.h.{i}."
        for name, n in (("ln_1", C), ("ln_2", C)):
            out[dst + f"{name}.weight"] = _t(sd[src + f"{name}.weight"])
            out[dst + f"{name}.bias"] = bias(src + f"{name}.bias", n)
        for name, n in (("attn.c_attn", 3 * C), ("attn.c_proj", C), ("mlp.c_fc", cfg.d_ff), ("mlp.c_proj", C)):
            out[dst + f"{name}.weight"] = _t(sd[src + f"{name}.weight"].t())  # Conv1D stores (in, out)
            out[dst + f"{name}.bias"] = bias(src + f"{name}.bias", n)
    out["transformer.ln_f.weight"] = _t(sd["ln_f.weight"])
    out["transformer.ln_f.bias"] = bias("ln_f.bias", C)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _t(sd["lm_head.weight"])
    return out


def _llama_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": _t(sd["wte.weight"])}
    q, kv, ff = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.d_ff
    for i in range(cfg.n_layer):
        src, dst = f"h.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = _t(sd[src + "ln_1.weight"])
        out[dst + "post_attention_layernorm.weight"] = _t(sd[src + "ln_2.weight"])
        for part in ("weight", "bias") if cfg.bias else ("weight",):
            wq, wk, wv = sd[src + f"attn.c_attn.{part}"].split((q, kv, kv), dim=0)
            gate, up = sd[src + f"mlp.c_fc.{part}"].split((ff, ff), dim=0)
            out[dst + f"self_attn.q_proj.{part}"] = _t(wq)
            out[dst + f"self_attn.k_proj.{part}"] = _t(wk)
            out[dst + f"self_attn.v_proj.{part}"] = _t(wv)
            out[dst + f"self_attn.o_proj.{part}"] = _t(sd[src + f"attn.c_proj.{part}"])
            out[dst + f"mlp.gate_proj.{part}"] = _t(gate)
            out[dst + f"mlp.up_proj.{part}"] = _t(up)
            out[dst + f"mlp.down_proj.{part}"] = _t(sd[src + f"mlp.c_proj.{part}"])
    out["model.norm.weight"] = _t(sd["ln_f.weight"])
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _t(sd["lm_head.weight"])
    return out


def hf_state_dict(model: Transformer, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """hwlm weights renamed (and transposed, split) to the Hugging Face module's names."""
    sd = model.state_dict()
    return _gpt2_state_dict(sd, cfg) if cfg.flavour == "gpt2" else _llama_state_dict(sd, cfg)


def hf_config(cfg: ModelConfig, eot_id: int, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The ``config.json`` of the matching Hugging Face architecture."""
    common = {"vocab_size": cfg.vocab_size, "bos_token_id": eot_id, "eos_token_id": eot_id,
              "tie_word_embeddings": cfg.tie_embeddings, "dtype": str(dtype).removeprefix("torch."),
              "use_cache": True}
    if cfg.flavour == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
                "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
                "n_head": cfg.n_head, "n_inner": cfg.d_ff, "activation_function": "gelu_new",
                "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
                "attn_pdrop": cfg.dropout, "scale_attn_weights": True}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
            "hidden_size": cfg.n_embd, "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": bool(cfg.bias), "mlp_bias": bool(cfg.bias), "attention_dropout": cfg.dropout}


def _tokenizer_info(path: Path) -> tuple[int, int]:
    """(vocabulary size, id of the end-of-text token) of a HF ``tokenizer.json``."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise DataError(f"tokenizer file {path} does not exist: pass the tokenizer.json of the data folder "
                        f"or checkpoint")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust library raises a bare Exception on malformed JSON
        raise DataError(f"tokenizer file {path} is not a valid tokenizers JSON file: {exc}") from None
    eot = tok.token_to_id(EOT_TOKEN)
    if eot is None:
        raise DataError(f"tokenizer {path} has no {EOT_TOKEN} token: use a tokenizer made by hwlm prepare")
    return tok.get_vocab_size(), eot


def export_hf(model: Transformer, model_cfg: ModelConfig, tokenizer_json_path: str | os.PathLike,
              out_dir: str | os.PathLike) -> Path:
    """Write a ``transformers`` folder for ``model`` at ``out_dir`` (atomically) and return its path."""
    from hwlm.model.quantized import dequantize

    model = dequantize(model)  # a quantized run (hwlm compress) exports its dequantized float weights
    tok_path = Path(tokenizer_json_path)
    vocab, eot = _tokenizer_info(tok_path)
    if vocab > model_cfg.vocab_size:
        raise CheckpointError(f"tokenizer {tok_path} has {vocab} tokens but the model only {model_cfg.vocab_size}: "
                              f"export with the tokenizer the model was trained with")
    tensors = hf_state_dict(model, model_cfg)
    dtype = next(iter(tensors.values())).dtype
    out = Path(out_dir)
    special = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
    with atomic_dir(out, what="hwlm export") as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", hf_config(model_cfg, eot, dtype))
        atomic_write_json(tmp / "generation_config.json",
                          {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot})
        shutil.copyfile(tok_path, tmp / "tokenizer.json")
        atomic_write_json(tmp / "tokenizer_config.json",
                          {"tokenizer_class": "PreTrainedTokenizerFast", **special,
                           "model_max_length": model_cfg.block_size, "clean_up_tokenization_spaces": False})
        atomic_write_json(tmp / "special_tokens_map.json", special)
        atomic_write_json(tmp / "hwlm_model_config.json", to_dict(model_cfg))
    return out
