"""``compress(CompressConfig) -> CompressResult``: a new run folder made from a trained run.

    >>> from hwlm.compress import CompressConfig, compress
    >>> r = compress(CompressConfig(run="runs/train", method="int8", out="runs/int8"))  # doctest: +SKIP
    >>> print(r.table)                                                                # doctest: +SKIP

The new folder is a run like any other (``eval``, ``generate``, ``bench infer``, ``export`` load it
through ``hwlm.train.load_model``)::

    OUT/compress.json                      what was done: method, precision and why, source, table
    OUT/checkpoints/step-NNNNNNN/          model.safetensors (int8 / int4 weights as stored tensors),
                                           config.json (the source's, plus a ``compression`` section),
                                           state.json, tokenizer.json, COMPLETE

It is written under a temp name, loaded back through ``load_model`` (so a folder that would not load
is never published) and renamed into place: a failure at any point leaves nothing behind.

An encrypted run (``hwlm train --encrypt``) gives an encrypted run under the same key: its weights go
through :func:`hwlm.train.checkpoint.write_weights` encrypted, COMPLETE records the key id. The key is
``--key-file`` (else $HWLM_DATA_KEY), and it opens an encrypted data folder too.
"""

from __future__ import annotations

import copy
import datetime as _dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hwlm.compress.config import CompressConfig
from hwlm.config import to_dict
from hwlm.errors import ConfigError

__all__ = ["CompressResult", "compress"]

RECORD_FILE = "compress.json"


@dataclass
class CompressResult:
    """Where the new run is, what was done, and the trade-off table (rows and rendered)."""

    out: Path
    method: str
    precision: str
    record: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""


def _data_dir(cfg: CompressConfig, run_config: dict[str, Any]) -> Path:
    data = cfg.data or Path(run_config.get("data", {}).get("dir", ""))
    if not str(data) or not (Path(data) / "manifest.json").is_file():
        raise ConfigError(f"no prepared data folder for run {cfg.run} (tried {data or 'none'}): pass --data DIR")
    return Path(data)


def _train_value(run_config: dict[str, Any], key: str, default: Any) -> Any:
    value = run_config.get("train", {}).get(key)
    return default if value is None else value


def _build(cfg: CompressConfig, loaded: Any, data: Path,
           key: bytes | None = None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(compressed model, compression section, extra record) for ``cfg.method``."""
    from hwlm.compress.quant import choose_int8, compression_section, quantize_model

    run_config, src_steps = loaded.run_config or {}, max(1, loaded.step)
    batch = cfg.batch_size or int(_train_value(run_config, "batch_size", 8))
    if cfg.method in ("int8", "int4"):
        choice: dict[str, Any] = {"asked": cfg.precision, "chosen": cfg.precision}
        precision = "w4a16" if cfg.method == "int4" else cfg.precision
        if precision == "auto":
            precision, choice = choose_int8(loaded.model, cfg.quantize_head)
        choice["chosen"] = precision
        head = cfg.quantize_head and (precision != "w4a16" or _int4_fits(loaded.model.lm_head, cfg.group_size))
        model = quantize_model(copy.deepcopy(loaded.model), precision, cfg.group_size, head)
        extra = {"group_size": cfg.group_size} if precision == "w4a16" else {}
        section = compression_section(cfg.method, precision, quantize_head=head, **extra)
        notes = [] if head == cfg.quantize_head else [
            f"output layer ({loaded.model.lm_head.out_features} rows) kept in fp32: int4 needs rows in multiples of 8"]
        return model, section, {"precision_choice": choice, "notes": notes}
    if cfg.method == "prune":
        from hwlm.compress.prune import prune_model

        model = copy.deepcopy(loaded.model)
        steps = int(src_steps * cfg.finetune_fraction)
        lr = cfg.lr or float(_train_value(run_config, "min_lr", 6e-5))
        done = prune_model(model, cfg.sparsity, cfg.pattern, data, steps, batch, lr, cfg.seed, key)
        section = compression_section("prune", "fp32", pattern=cfg.pattern, sparsity=done["sparsity"])
        return model.eval(), section, {"prune": done, "source_steps": src_steps}
    from hwlm.compress.distill import distill_model

    steps = cfg.steps or src_steps
    lr = cfg.lr or float(_train_value(run_config, "lr", 6e-4))
    model, done = distill_model(loaded.model, cfg.model, data, steps, batch, lr, cfg.alpha, cfg.temperature,
                                cfg.seed, key)
    section = compression_section("distill", "fp32", teacher=str(loaded.path), student=cfg.model, steps=steps)
    return model, section, {"distill": done}


def _int4_fits(layer: Any, group_size: int) -> bool:
    return layer.out_features % 8 == 0 and layer.in_features % group_size == 0


def _write_checkpoint(folder: Path, model: Any, loaded: Any, section: dict[str, Any],
                      key: bytes | None = None) -> Path:
    """The checkpoint folder of the new run, in the layout ``hwlm.train.load_model`` reads (encrypted
    under ``key`` when one is given: that of an encrypted source)."""
    from hwlm.io import atomic_write_json
    from hwlm.train import checkpoint as ckpt_io

    step = int(section.get("steps") or loaded.step)  # a student's own steps, else the source's
    ckpt = folder / "checkpoints" / f"step-{step:07d}"
    ckpt.mkdir(parents=True)
    ckpt_io.write_weights(ckpt / ckpt_io.MODEL_FILE, model, {"format": "pt", "step": str(step)}, key)
    config = dict(loaded.run_config or {})
    config["model"] = to_dict(model.cfg)
    config["compression"] = section
    atomic_write_json(ckpt / "config.json", config)
    state = ckpt_io.read_json(loaded.path / "state.json")
    atomic_write_json(ckpt / "state.json", {**state, "step": step, "compressed_from": str(loaded.path)})
    shutil.copyfile(loaded.path / "tokenizer.json", ckpt / "tokenizer.json")
    ckpt_io.write_complete(ckpt, step, key)
    return ckpt


def _table(cfg: CompressConfig, loaded: Any, new: Any, section: dict[str, Any], data: Path, new_weights: Path,
           energy_meter: Callable[[str], Any] | None, key: bytes | None = None) -> list[dict[str, Any]]:
    from hwlm.compress.table import measure_row, quality
    from hwlm.data import eval_batches
    from hwlm.train import checkpoint as ckpt_io

    def windows(block: int) -> Any:
        return eval_batches(data, "val", 4, block, max_batches=cfg.eval_batches, key=key)

    block = min(loaded.model_cfg.block_size, new.cfg.block_size)
    base_q = quality(loaded.model, None, windows(block), str(next(loaded.model.parameters()).device))
    new_q = quality(new, loaded.model, windows(block), str(next(new.parameters()).device))
    common = dict(batches=cfg.batches, steps=cfg.decode_steps, energy_meter=energy_meter)
    rows = [measure_row("original (fp32)", loaded.model, weights_file=loaded.path / ckpt_io.MODEL_FILE,
                        quality_row=base_q, baseline_ppl=None, **common),
            measure_row(_label(cfg, section), new, weights_file=new_weights, quality_row=new_q,
                        baseline_ppl=base_q["ppl"], **common)]
    return rows


def _measured_on(device: Any) -> dict[str, Any]:
    """Where and under what load the table was timed: its speeds mean little without it."""
    import os
    import platform

    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"host": platform.node(), "device": str(device), "threads": torch.get_num_threads(),
            "load_avg_1m": None if load is None else round(load[0], 2)}


def _label(cfg: CompressConfig, section: dict[str, Any]) -> str:
    if cfg.method == "prune":
        return f"prune {cfg.pattern}" + ("" if cfg.pattern == "2:4" else f" {cfg.sparsity:.0%}")
    if cfg.method == "distill":
        return f"distill -> {cfg.model}"
    return f"{cfg.method} {section.get('precision', '')}".strip()


def compress(cfg: CompressConfig, energy_meter: Callable[[str], Any] | None = None) -> CompressResult:
    """Compress ``cfg.run`` with ``cfg.method`` into the new run folder ``cfg.out``.

    ``energy_meter(device_type)`` (e.g. ``hwlm.bench.energy.EnergyMeter``) labels the table's energy
    column; without one the column says ``n/a``.
    """
    from hwlm.compress.table import render_table
    from hwlm.crypt import optional_key
    from hwlm.device import select_device
    from hwlm.io import atomic_dir, atomic_write_json
    from hwlm.train.load import load_model

    if cfg.run is None or cfg.out is None:
        raise ConfigError("compress needs --run (the run to compress) and --out (a new folder)")
    if cfg.out.exists() and any(cfg.out.iterdir()):
        raise ConfigError(f"--out {cfg.out} already exists and is not empty: choose a new folder or delete it")
    if cfg.out.resolve() == Path(cfg.run).resolve():
        raise ConfigError("--out must be a new folder, not the run being compressed")
    from hwlm.train import checkpoint as ckpt_io

    device = select_device(cfg.device).device
    key = optional_key(cfg.key_file)
    loaded = load_model(cfg.run, device, key)
    out_key = ckpt_io.checkpoint_key(loaded.path, key)  # an encrypted source's key (checked); None when plain
    if (loaded.run_config or {}).get("compression", {}).get("precision", "fp32") != "fp32":
        raise ConfigError(f"run {cfg.run} is already quantized: compress the original float run")
    data = _data_dir(cfg, loaded.run_config or {})
    model, section, extra = _build(cfg, loaded, data, key)
    record: dict[str, Any] = {
        "version": 1, "kind": "hwlm-compress", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "method": cfg.method, "precision": section["precision"], "compression": section,
        "source": {"run": str(cfg.run), "checkpoint": str(loaded.path), "step": loaded.step},
        "config": to_dict(cfg), **extra}
    if out_key is not None:
        record["encryption"] = ckpt_io.read_json(loaded.path / "COMPLETE")["encryption"]
    rows: list[dict[str, Any]] = []
    with atomic_dir(cfg.out, what="hwlm compress") as tmp:
        ckpt = _write_checkpoint(tmp, model, loaded, section, out_key)
        reloaded = load_model(tmp, device, out_key)  # the folder loads as any run does, before it is published
        if cfg.table:
            rows = _table(cfg, loaded, reloaded.model, section, data, ckpt / "model.safetensors", energy_meter, key)
            record["table"] = rows
            record["measured_on"] = _measured_on(device)
        atomic_write_json(tmp / RECORD_FILE, record)
    return CompressResult(out=cfg.out, method=cfg.method, precision=section["precision"], record=record,
                          rows=rows, table=render_table(rows, cfg.batches) if rows else "")
