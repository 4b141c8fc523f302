"""A run resolved once: the train config, the fully sized model config and the data's manifest.

``hwlm train`` used to build the preset and read the manifest three times on the way to the model
(the CLI's overrides, the launch decision, the training loop). Now :func:`resolve_run` does both once
and everything downstream takes the :class:`ResolvedRun`:

    run = resolve_run(TrainConfig(data=Path("runs/data"), max_steps=100), {"n_layer": 2})
    plan = plan_launch(run, "auto")          # hwlm.train.launch: processes and strategy
    train(run)                               # hwlm.train.train accepts it (or a TrainConfig, as before)

Workers started by ``hwlm train --nproc N`` read the resolved run from a file in the run folder
(:meth:`ResolvedRun.save` / :meth:`ResolvedRun.load`, a versioned JSON object with strict keys)
instead of flags rebuilt from the overrides, so every rank trains exactly what the launcher resolved.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hwlm.config import from_dict, to_dict
from hwlm.errors import ConfigError, DataError
from hwlm.io import atomic_write_json
from hwlm.model.config import ModelConfig
from hwlm.train.config import TrainConfig

__all__ = ["ResolvedRun", "resolve_run", "data_facts", "RESOLVED_VERSION"]

RESOLVED_VERSION = 1
RUN_CONFIG_VERSION = 1  # of config.json in the run folder and in every checkpoint
_KEYS = {"version", "train", "model", "manifest"}


def data_facts(data_dir: Path | None) -> dict[str, Any]:
    """The manifest of a prepared data folder, checked for a usable train and val split."""
    from hwlm.data import load_manifest

    if data_dir is None:
        raise ConfigError("no data folder given: pass --data DIR (made by `hwlm prepare`)")
    manifest = load_manifest(data_dir)
    for split in ("train", "val"):
        if manifest.get("splits", {}).get(split, {}).get("tokens", 0) <= 0:
            raise DataError(f"the {split} split of {data_dir} is empty: prepare more text "
                            "(or a larger val_fraction) with `hwlm prepare`")
    return manifest


@dataclass(frozen=True)
class ResolvedRun:
    """What one training run is: ``train`` settings, the ``model`` sized to the data, the data's ``manifest``."""

    train: TrainConfig
    model: ModelConfig
    manifest: dict[str, Any]

    def with_train(self, **changes: Any) -> "ResolvedRun":
        """A copy with some train settings changed (e.g. the strategy the launcher chose)."""
        return replace(self, train=replace(self.train, **changes))

    def run_record(self, runtime: dict[str, Any]) -> dict[str, Any]:
        """What config.json (run folder and every checkpoint) records: enough to rebuild and judge the
        run; ``runtime`` holds what only the started run knows (device, precision, world size, ...)."""
        m = self.manifest
        data = {k: m.get(k) for k in ("vocab_size", "eot_id", "dtype", "tokenizer_sha256")}
        data |= {"dir": str(Path(self.train.data).resolve()), "prepare": m.get("config", {})}
        return {"version": RUN_CONFIG_VERSION, "train": to_dict(self.train), "model": to_dict(self.model),
                "data": data, "runtime": runtime}

    def to_dict(self) -> dict[str, Any]:
        return {"version": RESOLVED_VERSION, "train": to_dict(self.train), "model": to_dict(self.model),
                "manifest": self.manifest}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "resolved run") -> "ResolvedRun":
        if not isinstance(data, dict) or data.get("version") != RESOLVED_VERSION:
            found = data.get("version") if isinstance(data, dict) else None
            raise ConfigError(f"{where} has version {found!r}; this hwlm reads version {RESOLVED_VERSION}: "
                              "start the run again with the same hwlm")
        if set(data) != _KEYS:
            odd = sorted(set(data) ^ _KEYS)
            raise ConfigError(f"{where} has unknown or missing keys {odd}; expected {sorted(_KEYS)}")
        return cls(from_dict(TrainConfig, data["train"], f"{where} [train]"),
                   from_dict(ModelConfig, data["model"], f"{where} [model]"), dict(data["manifest"]))

    def save(self, folder: Path) -> Path:
        """Write this run as a new hidden file in ``folder`` (a unique name: several launchers may share
        one run folder on shared storage); returns its path. The caller removes it when done."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".resolved-run-", suffix=".json", dir=folder)
        os.close(fd)
        atomic_write_json(name, self.to_dict())
        return Path(name)

    @classmethod
    def load(cls, path: Path) -> "ResolvedRun":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the resolved run {path}: {exc}; start the run again") from None
        return cls.from_dict(data, str(path))


def resolve_run(cfg: TrainConfig, model_overrides: dict[str, Any] | None = None,
                model_cfg: ModelConfig | None = None) -> ResolvedRun:
    """Read ``cfg.data``'s manifest once and size the model to it.

    The model is ``model_cfg`` as given, or the preset ``cfg.model`` with ``model_overrides`` (a
    [model] table, --model-* flags), its vocabulary the data's unless ``vocab_size`` is overridden.
    """
    if model_cfg is not None and model_overrides:
        raise ConfigError("give a model config or model overrides, not both")
    manifest = data_facts(cfg.data)
    if model_cfg is None:
        overrides = dict(model_overrides or {})
        overrides["vocab_size"] = overrides.get("vocab_size") or manifest["vocab_size"]
        model_cfg = ModelConfig.from_name(cfg.model, **overrides)
    if model_cfg.vocab_size < manifest["vocab_size"]:
        raise ConfigError(f"model vocab_size {model_cfg.vocab_size} is smaller than the data's vocabulary "
                          f"({manifest['vocab_size']}); leave vocab_size unset or raise it")
    return ResolvedRun(cfg, model_cfg, manifest)
