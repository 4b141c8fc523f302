"""Build, restore and load classifiers: specs, ``--init-from`` trunks, LoRA wrapping, ``load_classifier``.

A classification run folder is laid out like a language-model run (``config.json``, ``log.jsonl``,
``checkpoints/step-NNNNNNN/`` with ``COMPLETE`` written last, see :mod:`hwlm.train.checkpoint`); its
``config.json`` has ``"task": "classify"`` and a ``classifier`` spec (:func:`hwlm.model.classifier.build_classifier`),
and each checkpoint also holds ``labels.json``. ``hwlm train --task classify --seeds K`` writes K such
runs under ``OUT/seed-S/`` and ``OUT/seeds.json`` listing them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hwlm.config import from_dict, to_dict
from hwlm.errors import CheckpointError, ConfigError, HwlmError
from hwlm.io import sha256_file
from hwlm.model.classifier import build_classifier
from hwlm.model.config import ModelConfig
from hwlm.train import checkpoint as ckpt_io
from hwlm.train.config import TrainConfig
from hwlm.train.task_config import TaskConfig

__all__ = ["classifier_spec", "lm_trunk", "wide_spec", "bow_run", "apply_lora", "LoadedClassifier", "load_classifier",
           "is_classifier_run", "seed_runs", "SEEDS_FILE", "LORA_TARGETS"]

SEEDS_FILE = "seeds.json"
# hwlm Transformer Linear layers adapted by LoRA: fused q/k/v, attention output, MLP in and out.
LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]


def lm_trunk(init_from: Path, manifest: dict[str, Any], data_dir: Path) -> tuple[ModelConfig, Path]:
    """The language-model run ``init_from``'s config and checkpoint, checked to share the data's tokenizer."""
    from tokenizers import Tokenizer

    ckpt = ckpt_io.resolve_checkpoint(Path(init_from))
    ckpt_io.verify_checkpoint(ckpt)
    conf = ckpt_io.read_json(ckpt / "config.json")
    if conf.get("task", "lm") != "lm" or "model" not in conf:
        raise ConfigError(f"--init-from {init_from} is not a language-model run (task {conf.get('task')!r}); "
                          "give a run made by plain `hwlm train`")
    if manifest.get("input") != "text":
        raise ConfigError("--init-from needs text data; this folder holds feature rows")
    same = sha256_file(ckpt / "tokenizer.json") == manifest.get("tokenizer_sha256")
    if not same:  # the same vocabulary serialized differently still counts as the same tokenizer
        data_tok = Path(data_dir) / "tokenizer.json"
        same = Tokenizer.from_file(str(ckpt / "tokenizer.json")).to_str() == Tokenizer.from_file(str(data_tok)).to_str()
    if not same:
        raise ConfigError(f"--init-from {init_from} uses another tokenizer than the data {data_dir}: "
                          f"prepare it with --tokenizer {ckpt / 'tokenizer.json'}")
    try:
        return from_dict(ModelConfig, conf["model"], where=str(ckpt / "config.json")), ckpt
    except HwlmError as exc:
        raise CheckpointError(f"model config in {ckpt} is not valid for this hwlm: {exc}") from None


def classifier_spec(cfg: TrainConfig, task: TaskConfig, manifest: dict[str, Any],
                    model_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The spec of the model a classification run trains (saved in its config.json)."""
    k = len(manifest["labels"])
    if task.classifier == "mlp":
        if manifest["input"] != "features":
            raise ConfigError("the mlp classifier takes feature rows (e.g. prepare builtin:digits); "
                              "for text use --classifier bow, lstm or transformer")
        return {"kind": "mlp", "n_classes": k, "n_features": manifest["n_features"], "hidden": task.hidden,
                "layers": task.layers, "dropout": task.dropout}
    if manifest["input"] != "text":
        raise ConfigError(f"the {task.classifier} classifier reads text; this data folder holds feature rows: "
                          "use --classifier mlp")
    common = {"n_classes": k, "vocab_size": manifest["vocab_size"], "pad_id": manifest["pad_id"]}
    if task.classifier == "lstm":
        return {"kind": "lstm", **common, "embed": task.embed, "hidden": task.hidden, "layers": task.layers,
                "dropout": task.dropout, "max_len": task.max_len}
    if task.classifier == "bow":
        return {"kind": "bow", **common, "embed": task.embed, "ngrams": task.ngrams, "buckets": task.buckets,
                "features": "words",
                "dropout": task.dropout, "max_len": task.max_len}
    if task.init_from is not None:
        if model_overrides:
            raise ConfigError("--init-from takes the trunk's shape from that run: drop the --model-* / [model] "
                              f"overrides ({', '.join(model_overrides)})")
        trunk, _ = lm_trunk(task.init_from, manifest, Path(cfg.data))
    else:
        trunk = ModelConfig.from_name(cfg.model, **{**(model_overrides or {}), "vocab_size": manifest["vocab_size"]})
    if trunk.vocab_size < manifest["vocab_size"]:
        raise ConfigError(f"the trunk's vocabulary ({trunk.vocab_size}) is smaller than the data's "
                          f"({manifest['vocab_size']})")
    spec = {"kind": "transformer", **common, "vocab_size": trunk.vocab_size, "pooling": task.pooling,
            "trunk": to_dict(trunk), "max_len": min(task.max_len, trunk.block_size),
            "lora_rank": task.lora_rank, "lora_alpha": task.lora_alpha}
    if task.classifier == "wide-deep":
        staged = {"staged": True} if task.wide_epochs else {}  # a deep_weight buffer, chosen on val
        spec |= {"kind": "wide-deep", "wide": wide_spec(task, manifest) | staged}
    return spec


def wide_spec(task: TaskConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """The bag of words of a wide & deep model: the task's shape, or that of the ``--wide-from`` run."""
    if task.wide_from is None:
        return {"vocab_size": manifest["vocab_size"], "embed": task.embed, "ngrams": task.ngrams,
                "buckets": task.buckets, "features": "words", "dropout": task.dropout}
    bow, _ = bow_run(task.wide_from, manifest)
    return {k: bow[k] for k in ("vocab_size", "embed", "ngrams", "buckets")} | {"features": "words",
                                                                                 "dropout": task.dropout}


def bow_run(path: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The spec and checkpoint of bag-of-words run ``path`` (``--wide-from``), checked against the data."""
    ckpt = ckpt_io.resolve_checkpoint(Path(path))
    conf = ckpt_io.read_json(ckpt / "config.json")
    spec = conf.get("classifier", {})
    if conf.get("task") != "classify" or spec.get("kind") != "bow" or spec.get("features", "tokens") != "words":
        raise ConfigError(f"--wide-from {path} is not a bag-of-words run with word features (kind "
                          f"{spec.get('kind')!r}); train one with --classifier bow")
    data = conf.get("data", {})
    if data.get("tokenizer_sha256") != manifest.get("tokenizer_sha256") or data.get("labels") != manifest["labels"]:
        raise ConfigError(f"--wide-from {path} was trained on data with another tokenizer or other labels than "
                          "this folder's: train it on the same prepared folder")
    return spec, ckpt


def apply_lora(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    """Wrap a TransformerClassifier in peft LoRA adapters (rank ``rank``); the head trains in full."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("--lora-rank needs peft: pip install 'hwlm[classify]'") from None
    conf = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      modules_to_save=["score"])
    return get_peft_model(model, conf)


def build_for_spec(spec: dict[str, Any]) -> nn.Module:
    """The model of ``spec``, LoRA-wrapped when the spec says so (as it was trained and saved)."""
    model = build_classifier(spec)
    if spec.get("lora_rank"):
        model = apply_lora(model, spec["lora_rank"], spec["lora_alpha"])
    return model


def plain_model(model: nn.Module) -> nn.Module:
    """A LoRA-wrapped model with its adapters merged in (plain modules); others unchanged."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


@dataclass
class LoadedClassifier:
    """A classifier in eval mode (adapters merged), with what predicting needs."""

    model: nn.Module
    spec: dict[str, Any]
    labels: list[str]
    tokenizer: Any | None  # tokenizers.Tokenizer; None for feature models
    step: int
    path: Path
    run_config: dict[str, Any]


def is_classifier_run(path: str | Path) -> bool:
    """Whether ``path`` is a classification run (or a checkpoint of one, or a --seeds parent)."""
    path = Path(path)
    if (path / SEEDS_FILE).is_file():
        return True
    for conf in (path / "config.json", path.parent.parent / "config.json"):
        if conf.is_file():
            try:
                return json.loads(conf.read_text(encoding="utf-8")).get("task") == "classify"
            except (OSError, ValueError):
                return False
    return False


def seed_runs(path: str | Path) -> list[Path]:
    """The sub-runs listed in ``path/seeds.json`` (a run trained with --seeds K)."""
    data = ckpt_io.read_json(Path(path) / SEEDS_FILE)
    return [Path(path) / r["dir"] for r in data["runs"]]


def load_classifier(run_or_checkpoint: str | Path, device: str = "cpu", key: bytes | None = None) -> LoadedClassifier:
    """The newest complete checkpoint of a classification run, verified, adapters merged, in eval mode.

    An encrypted checkpoint (``--encrypt``) opens with ``key``, else ``$HWLM_DATA_KEY``; a wrong or missing
    key is one line before anything is read."""
    from hwlm.data.tokenizer import load_tokenizer

    path = Path(run_or_checkpoint)
    if (path / SEEDS_FILE).is_file():
        raise ConfigError(f"{path} holds {len(seed_runs(path))} seed runs: give one of them, e.g. "
                          f"{seed_runs(path)[0]}")
    ckpt = ckpt_io.resolve_checkpoint(path)
    key = ckpt_io.checkpoint_key(ckpt, key)
    ckpt_io.verify_checkpoint(ckpt, key)
    conf = ckpt_io.read_json(ckpt / "config.json")
    if conf.get("task") != "classify":
        raise ConfigError(f"{path} is not a classification run (task {conf.get('task', 'lm')!r})")
    model = build_for_spec(conf["classifier"])
    ckpt_io.load_weights(ckpt, model, "cpu", key)
    model = plain_model(model).to(device).eval()
    labels = ckpt_io.read_json(ckpt / "labels.json")["labels"]
    tok = load_tokenizer(ckpt / "tokenizer.json") if (ckpt / "tokenizer.json").is_file() else None
    state = ckpt_io.read_json(ckpt / "state.json")
    return LoadedClassifier(model=model, spec=conf["classifier"], labels=labels, tokenizer=tok,
                            step=int(state["step"]), path=ckpt, run_config=conf)
