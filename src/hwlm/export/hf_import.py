"""Import a local Hugging Face GPT-2 or Llama folder as an hwlm run: the inverse of :mod:`hwlm.export.hf`.

    >>> import_hf("~/models/gpt2", "runs/gpt2")  # doctest: +SKIP
    ImportResult(out=PosixPath('runs/gpt2'), flavour='gpt2', params=124439808)

The folder is what ``save_pretrained`` writes: ``config.json``, the weights (``model.safetensors``,
a sharded ``model.safetensors.index.json``, or ``pytorch_model.bin`` read with ``weights_only=True``)
and the fast tokenizer's ``tokenizer.json``. Nothing is downloaded. The mapping undoes the export's:
GPT-2's ``Conv1D`` weights (in, out) are transposed, Llama's q/k/v and gate/up projections are
concatenated into hwlm's fused matrices; rotary positions already use the same half-split convention.
Logits equal the ``transformers`` model's to float round-off (tested at 1e-4).

Architectures or options hwlm does not implement (another ``model_type``, an activation other than
GPT-2's ``gelu_new`` or Llama's ``silu``, rope scaling, biases on only some Llama projections) are
refused with one line rather than imported into a model that computes something else.

The run folder: ``OUT/checkpoints/step-0000000/`` with ``model.safetensors``, ``config.json`` (the
model, the end-of-text id, and an ``imported`` section naming the source), ``state.json``,
``tokenizer.json`` and ``COMPLETE``; written atomically.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hwlm.config import to_dict
from hwlm.errors import CheckpointError, ConfigError, DataError
from hwlm.export.hf import EOT_TOKEN
from hwlm.model.config import ModelConfig

__all__ = ["ImportResult", "import_hf", "hwlm_config_from_hf", "hwlm_state_dict"]


@dataclass
class ImportResult:
    out: Path
    flavour: str
    params: int


def _need(hf: dict[str, Any], key: str, where: Path) -> Any:
    if hf.get(key) is None:
        raise CheckpointError(f"{where} has no {key!r}: it is not a complete transformers config")
    return hf[key]


def hwlm_config_from_hf(hf: dict[str, Any], where: Path) -> ModelConfig:
    """The hwlm ``ModelConfig`` computing what the HF config's model computes, or a one-line refusal."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"{where}: GPT-2 activation {act!r} is not hwlm's tanh GELU (gelu_new); "
                              "this model cannot be imported exactly")
        return ModelConfig(flavour="gpt2", vocab_size=_need(hf, "vocab_size", where),
                           block_size=_need(hf, "n_positions", where), n_layer=_need(hf, "n_layer", where),
                           n_head=_need(hf, "n_head", where), n_embd=_need(hf, "n_embd", where),
                           d_ff=hf.get("n_inner") or 4 * hf["n_embd"], bias=True,
                           tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                           norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)))
    if kind == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{where}: Llama activation {hf.get('hidden_act')!r} is not SiLU; cannot import")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ConfigError(f"{where}: rope scaling {rope.get('rope_type', rope.get('type'))!r} is not "
                              "implemented in hwlm; only plain rotary positions import")
        heads, width = _need(hf, "num_attention_heads", where), _need(hf, "hidden_size", where)
        if hf.get("head_dim") not in (None, width // heads):
            raise ConfigError(f"{where}: head_dim {hf['head_dim']} is not hidden_size / heads ({width // heads}); "
                              "hwlm cannot hold this shape")
        if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
            raise ConfigError(f"{where}: biases on attention but not the MLP (or the reverse) are not hwlm's shape")
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        return ModelConfig(flavour="llama", vocab_size=_need(hf, "vocab_size", where),
                           block_size=_need(hf, "max_position_embeddings", where),
                           n_layer=_need(hf, "num_hidden_layers", where), n_head=heads,
                           n_kv_head=hf.get("num_key_value_heads") or heads, n_embd=width,
                           d_ff=_need(hf, "intermediate_size", where), bias=bool(hf.get("attention_bias", False)),
                           tie_embeddings=bool(hf.get("tie_word_embeddings", False)), rope_theta=float(theta),
                           norm_eps=float(hf.get("rms_norm_eps", 1e-6)))
    raise ConfigError(f"{where}: model_type {kind!r} cannot be imported; hwlm imports gpt2 and llama")


def _gpt2(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    p = "transformer." if "transformer.wte.weight" in sd else ""
    out = {"wte.weight": sd[p + "wte.weight"], "wpe.weight": sd[p + "wpe.weight"],
           "ln_f.weight": sd[p + "ln_f.weight"], "ln_f.bias": sd[p + "ln_f.bias"]}
    for i in range(cfg.n_layer):
        src, dst = f"{p}h.{i}.", f"h.{i}."
        for name in ("ln_1", "ln_2"):
            out[dst + f"{name}.weight"], out[dst + f"{name}.bias"] = sd[src + f"{name}.weight"], sd[src + f"{name}.bias"]
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[dst + f"{name}.weight"] = sd[src + f"{name}.weight"].t()  # Conv1D stores (in, out)
            out[dst + f"{name}.bias"] = sd[src + f"{name}.bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _llama(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {"wte.weight": sd["model.embed_tokens.weight"], "ln_f.weight": sd["model.norm.weight"]}
    for i in range(cfg.n_layer):
        src, dst = f"model.layers.{i}.", f"h.{i}."
        out[dst + "ln_1.weight"] = sd[src + "input_layernorm.weight"]
        out[dst + "ln_2.weight"] = sd[src + "post_attention_layernorm.weight"]
        for part in ("weight", "bias") if cfg.bias else ("weight",):
            a, m = src + "self_attn.", src + "mlp."
            out[dst + f"attn.c_attn.{part}"] = torch.cat([sd[a + f"{n}_proj.{part}"] for n in "qkv"], dim=0)
            out[dst + f"attn.c_proj.{part}"] = sd[a + f"o_proj.{part}"]
            out[dst + f"mlp.c_fc.{part}"] = torch.cat([sd[m + f"{n}_proj.{part}"] for n in ("gate", "up")], dim=0)
            out[dst + f"mlp.c_proj.{part}"] = sd[m + f"down_proj.{part}"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def hwlm_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF weights renamed (transposed, concatenated) to hwlm's; a missing tensor is a CheckpointError."""
    try:
        out = _gpt2(sd, cfg) if cfg.flavour == "gpt2" else _llama(sd, cfg)
    except KeyError as exc:
        raise CheckpointError(f"the weights lack {exc.args[0]!r}: they do not belong to this config") from None
    out = {k: v.float().contiguous() for k, v in out.items()}
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["wte.weight"]  # one tensor under both names, as the model ties them
    return out


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(folder / f).items()}
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _eot_id(tokenizer_file: Path, hf: dict[str, Any]) -> int | None:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # the Rust library raises a bare Exception on malformed JSON
        raise DataError(f"{tokenizer_file} is not a valid tokenizers JSON file: {exc}") from None
    eot = tok.token_to_id(EOT_TOKEN)
    eos = hf.get("eos_token_id")
    return eot if eot is not None else (eos[0] if isinstance(eos, list) else eos)


def import_hf(src: str | Path, out: str | Path) -> ImportResult:
    """Write the hwlm run ``out`` from the local transformers folder ``src``."""
    from safetensors.torch import save_model

    from hwlm.io import atomic_dir, atomic_write_json
    from hwlm.model.transformer import Transformer
    from hwlm.train import checkpoint as ckpt_io

    folder, out = Path(src).expanduser(), Path(out)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json: give a folder written by save_pretrained")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} already exists and is not empty: choose a new folder")
    if not (folder / "tokenizer.json").is_file():
        raise DataError(f"{folder} has no tokenizer.json: save the fast tokenizer there with "
                        "AutoTokenizer.from_pretrained(...).save_pretrained(folder)")
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'config.json'} cannot be read: {exc}") from None
    try:
        cfg = hwlm_config_from_hf(hf, folder / "config.json")
    except (TypeError, ValueError) as exc:  # e.g. a size given as a string
        raise CheckpointError(f"{folder / 'config.json'} has a value hwlm cannot use: {exc}") from None
    model = Transformer(cfg)
    try:
        model.load_state_dict(hwlm_state_dict(_read_weights(folder), cfg), strict=True)
    except RuntimeError as exc:
        why = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise CheckpointError(f"weights in {folder} do not fit its config: {why}") from None
    eot = _eot_id(folder / "tokenizer.json", hf)
    config = {"model": to_dict(cfg), "data": {"eot_id": eot, "vocab_size": cfg.vocab_size},
              "imported": {"format": "hf", "from": str(folder), "model_type": hf.get("model_type"),
                           "architectures": hf.get("architectures")}}
    with atomic_dir(out, what="hwlm import") as tmp:
        ckpt = tmp / "checkpoints" / "step-0000000"
        ckpt.mkdir(parents=True)
        save_model(model, str(ckpt / ckpt_io.MODEL_FILE), metadata={"format": "pt", "step": "0"})
        atomic_write_json(ckpt / "config.json", config)
        atomic_write_json(ckpt / "state.json", {"version": ckpt_io.CKPT_VERSION, "step": 0, "tokens": 0})
        shutil.copyfile(folder / "tokenizer.json", ckpt / "tokenizer.json")
        atomic_write_json(ckpt / "COMPLETE", {"version": ckpt_io.CKPT_VERSION, "step": 0,
                                              "files": ckpt_io.complete_files(ckpt)})
    return ImportResult(out=out, flavour=cfg.flavour, params=model.num_params())
