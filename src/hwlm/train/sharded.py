"""FSDP checkpoints: model and optimizer state through ``torch.distributed.checkpoint`` (DCP).

Every rank writes its own shards, in parallel, into ``dcp/`` of a hidden temp folder
``checkpoints/.step-NNNNNNN.tmp`` (a fixed name, so that all ranks find it). Rank 0 also writes
a full ``model.safetensors`` (gathered to its CPU: what ``hwlm eval``/``generate``/``export``
read), the RNG and loop state, ``COMPLETE`` last, and then, after every rank has agreed that
its part went well, renames the folder into place. On a multi-node run the run folder must be
on storage every node sees (each node writes its ranks' shards).

DCP stores tensors by parameter name with their global shapes, so a checkpoint reshards on
load: resume with any number of FSDP processes, or with one process or DDP (the optimizer
state is then read through DCP into the unsharded model).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from hwlm.errors import CheckpointError, HwlmError, ResourceError
from hwlm.io import atomic_write_json, publish_dir, resource_error
from hwlm.train import checkpoint as ckpt_io
from hwlm.train.parallel import World, agree

__all__ = ["save_sharded", "restore_sharded", "load_dcp_state", "DCP_DIR"]

DCP_DIR = "dcp"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _write_rank0_files(tmp: Path, step: int, full: dict[str, torch.Tensor], make_plain: Callable[[], nn.Module],
                       state: dict[str, Any], config: dict[str, Any], tokenizer_file: Path,
                       trainer_extra: dict[str, Any]) -> None:
    from safetensors.torch import save_model

    plain = make_plain()
    plain.load_state_dict(full, strict=True)
    try:
        save_model(plain, str(tmp / ckpt_io.MODEL_FILE), metadata={"format": "pt", "step": str(step)})
    except Exception as exc:
        if isinstance(exc, OSError):
            raise
        raise ResourceError(f"cannot write {tmp / ckpt_io.MODEL_FILE}: {exc}; check free disk space") from None
    ckpt_io._save_torch({"rng": ckpt_io.capture_rng(), **trainer_extra}, tmp / "trainer_state.pt")
    atomic_write_json(tmp / "state.json", {"version": ckpt_io.CKPT_VERSION, **state, "step": step})
    atomic_write_json(tmp / "config.json", config)
    shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
    ckpt_io.test_pause()
    files = ckpt_io.complete_files(tmp)
    atomic_write_json(tmp / "COMPLETE", {"version": ckpt_io.CKPT_VERSION, "step": step, "files": files})


def save_sharded(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                 state: dict[str, Any], config: dict[str, Any], tokenizer_file: Path, keep: int, world: World,
                 make_plain: Callable[[], nn.Module], trainer_extra: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` of an FSDP model; collective (every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    root = Path(run_dir) / "checkpoints"
    final = root / ckpt_io._step_name(step)
    tmp = root / f".{final.name}.tmp"
    others = f"another rank failed while writing checkpoint {final}; see its message"
    err: HwlmError | None = None
    if world.is_main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            ckpt_io.remove_stale(root)
            tmp.mkdir()
        except OSError as exc:
            err = resource_error(exc, final)
    agree(err, world, others)
    msd, osd = get_state_dict(model, optimizer)
    try:
        ckpt_io.test_fail(tmp / DCP_DIR)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / DCP_DIR))
    except Exception as exc:  # DCP raises on every rank when any rank failed
        err = exc if isinstance(exc, HwlmError) else resource_error(exc, final) if isinstance(exc, OSError) \
            else ResourceError(
            f"cannot write the sharded checkpoint {final}: {_first_line(exc)}; check free disk space")
    agree(err, world, others, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if world.is_main:
        try:
            _write_rank0_files(tmp, step, full, make_plain, state, config, tokenizer_file, trainer_extra or {})
            publish_dir(tmp, final)
            ckpt_io.prune_checkpoints(run_dir, keep)
        except OSError as exc:
            err = resource_error(exc, final)
        except HwlmError as exc:
            err = exc
        if err is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    agree(err, world, others)
    return final


def load_dcp_state(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Model and optimizer state from ``ckpt/dcp`` into ``model`` (sharded or not), resharding as needed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer)
    sd = {"model": msd, "optim": osd}
    try:
        with warnings.catch_warnings():  # one process reading a sharded checkpoint is what we mean to do
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(sd, checkpoint_id=str(ckpt / DCP_DIR))
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    except Exception as exc:
        raise CheckpointError(f"sharded state in {ckpt / DCP_DIR} does not fit this run: {_first_line(exc)}") from None


def restore_sharded(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore an FSDP run from a verified checkpoint; returns state.json and the trainer extras."""
    if not (ckpt / DCP_DIR).is_dir():
        raise CheckpointError(f"checkpoint {ckpt} was written by a one-process or DDP run, which FSDP cannot "
                              "resume; resume it with --strategy ddp (or one process)")
    load_dcp_state(ckpt, model, optimizer)
    trainer = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
    ckpt_io.restore_rng(trainer.pop("rng"))
    return ckpt_io.read_json(ckpt / "state.json"), trainer
