"""Export a last-token-pooled Transformer classifier as a Hugging Face sequence classifier.

``GPT2ForSequenceClassification`` (gpt2 flavour) or ``LlamaForSequenceClassification`` (llama flavour):
the trunk's weights map exactly as in :mod:`hwlm.export.hf`, the head is HF's bias-free ``score``
Linear, and ``config.json`` carries ``id2label``, ``label2id`` and ``pad_token_id``. Hugging Face pools
the rightmost token that is not ``pad_token_id``, which is what hwlm's ``pooling = "last"`` computes on
right-padded batches, so logits match hwlm's to float32 round-off (tested within 1e-4). LoRA adapters
are merged before export.

Other heads (mean pooling) and the LSTM, bag-of-words and MLP classifiers have no Hugging Face
counterpart and refuse with one line.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hwlm.config import from_dict, to_dict
from hwlm.errors import ConfigError
from hwlm.export.hf import hf_config, hf_state_dict
from hwlm.io import atomic_dir, atomic_write_json
from hwlm.model.config import ModelConfig

__all__ = ["export_hf_classifier"]


def export_hf_classifier(run: str | os.PathLike, out_dir: str | os.PathLike,
                         key: bytes | None = None) -> tuple[Path, str]:
    """Write the ``transformers`` folder of classification run ``run``; returns (folder, architecture).

    An encrypted run opens with ``key`` (else $HWLM_DATA_KEY); the export itself is plain, for other tools."""
    from safetensors.torch import save_file

    from hwlm.train.classify_load import load_classifier

    loaded = load_classifier(run, "cpu", key)
    spec = loaded.spec
    if spec["kind"] != "transformer":
        raise ConfigError(f"{run} is a {spec['kind']} classifier; Hugging Face export covers the Transformer "
                          "classifier with last-token pooling only")
    if spec.get("pooling") != "last":
        raise ConfigError(f"{run} pools by {spec.get('pooling')!r}; Hugging Face's sequence classifiers pool the last "
                          "token: train with --pooling last to export")
    trunk = from_dict(ModelConfig, spec["trunk"])
    tensors = {k: v for k, v in hf_state_dict(loaded.model.trunk, trunk).items() if k != "lm_head.weight"}
    tensors["score.weight"] = loaded.model.score.weight.detach().cpu().contiguous()
    dtype = tensors["score.weight"].dtype
    pad = int(spec["pad_id"])
    arch = "GPT2ForSequenceClassification" if trunk.flavour == "gpt2" else "LlamaForSequenceClassification"
    config = hf_config(trunk, pad, dtype)
    config |= {"architectures": [arch], "pad_token_id": pad, "problem_type": "single_label_classification",
               "id2label": {str(i): name for i, name in enumerate(loaded.labels)},
               "label2id": {name: i for i, name in enumerate(loaded.labels)}}
    config.pop("use_cache", None)
    config["tie_word_embeddings"] = False  # no LM head in a sequence classifier
    eot = loaded.tokenizer.id_to_token(pad)
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": eot}
    out = Path(out_dir)
    with atomic_dir(out, what="hwlm export") as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", config)
        shutil.copyfile(loaded.path / "tokenizer.json", tmp / "tokenizer.json")
        atomic_write_json(tmp / "tokenizer_config.json",
                          {"tokenizer_class": "PreTrainedTokenizerFast", **special, "padding_side": "right",
                           "model_max_length": spec["max_len"], "clean_up_tokenization_spaces": False})
        atomic_write_json(tmp / "special_tokens_map.json", special)
        atomic_write_json(tmp / "hwlm_classifier.json", {"classifier": spec, "trunk": to_dict(trunk),
                                                         "labels": loaded.labels, "step": loaded.step})
    return out, arch
