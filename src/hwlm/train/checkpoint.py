"""Checkpoints: write atomically, keep the newest K, verify and restore exactly.

A checkpoint is a folder ``RUN/checkpoints/step-NNNNNNN/`` holding

    model.safetensors   weights (``safetensors.torch.save_model``: tied tensors stored once)
    optimizer.pt        ``optimizer.state_dict()``
    trainer_state.pt    {"rng": RNG states (Python, NumPy, torch CPU, every CUDA device)} (+ fp16 loss scaler)
    state.json          step, tokens, data loader position, seconds trained, chosen precision
    config.json         train + model config and the data's tokenizer facts
    tokenizer.json      copy of the data's tokenizer, so the run folder is self-contained
    COMPLETE            written last: {"version", "step", "files": {name: sha256}}

The folder is built under a temp name and renamed into place (:func:`hwlm.io.atomic_dir`),
so a crash or a full disk while saving leaves the previous checkpoints as they were.
Loading checks ``COMPLETE`` and every file's sha256 before touching the model; with
``--resume auto`` a corrupt newest checkpoint (a file missing or not matching its sha256) is
renamed ``corrupt-step-N-<time>`` and the one before is taken (:func:`newest_valid_checkpoint`). Every
file loads with ``torch.load(weights_only=True)``: nothing in a checkpoint runs code.
An FSDP run's checkpoint holds ``dcp/`` (sharded model and optimizer state, see
:mod:`hwlm.train.sharded`) instead of ``optimizer.pt``; ``model.safetensors`` is always there.

Encrypted (``hwlm train --encrypt`` of any task, a ``key`` given to :func:`save_checkpoint`; ``hwlm compress``
writes through :func:`write_weights` / :func:`write_complete` the same way): ``model.safetensors``,
``optimizer.pt`` and ``trainer_state.pt`` keep their names but hold :mod:`hwlm.crypt` files (chunked
AES-256-GCM, encrypted in memory: no plaintext touches the disk); ``state.json``, ``config.json``,
``tokenizer.json`` and ``COMPLETE`` stay plain. COMPLETE gains ``"encryption": {"scheme", "key_id"}`` and
its sha256s are those of the files as stored (the ciphertext), so verifying needs no key. Readers check the
key id first (:func:`checkpoint_key`): a wrong key is :class:`hwlm.crypt.WrongKeyError`, never a corrupt
checkpoint, and ``--resume auto`` stops on it with nothing moved aside. A changed byte fails the sha256
(and, with the key, names the chunk that fails authentication): that checkpoint *is* corrupt and is
moved aside like any other.

Old checkpoints are renamed to a hidden name before they are deleted, so a kill while pruning
never leaves a half-deleted folder that still looks complete; hidden leftovers (``.step-*``) of
killed saves are removed at the next save. Two test-only environment hooks exercise the failure
paths from outside the process: ``HWLM_TEST_SLOW_CKPT_WRITE=SECONDS`` sleeps inside the write
(before ``COMPLETE``), ``HWLM_TEST_FAIL_CKPT_WRITE=1`` fails it as a full disk would.
"""

from __future__ import annotations

import errno
import gc
import io
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hwlm.crypt import check_chunks, encrypt_bytes, encryption_section, is_encrypted, key_for, read_encrypted
from hwlm.errors import CheckpointError, ConfigError, DataError, ResourceError
from hwlm.io import atomic_dir, atomic_write_bytes, atomic_write_json, sha256_file

__all__ = ["CKPT_VERSION", "save_checkpoint", "list_checkpoints", "latest_checkpoint", "resolve_checkpoint",
           "verify_checkpoint", "read_json", "restore_training", "capture_rng", "restore_rng",
           "check_same_model", "prune_checkpoints", "complete_files", "test_pause", "test_fail",
           "remove_stale", "CorruptCheckpointError", "move_aside", "newest_valid_checkpoint", "resume_checkpoint", "checkpoint_key",
           "load_weights", "write_weights", "load_torch_file", "write_complete", "is_encrypted_checkpoint",
           "PLAIN_EXPORT_NOTE"]

CKPT_VERSION = 1
# What `hwlm export` says when its run is encrypted: an export is for another tool, which cannot read hwlm-enc.
PLAIN_EXPORT_NOTE = ("note: {run} is encrypted; the export in {out} is written in plain (an export is for other "
                     "tools): keep it as safe as the key")
MODEL_FILE = "model.safetensors"
_STEP_DIR = re.compile(r"^step-(\d{7,})$")


def _step_name(step: int) -> str:
    return f"step-{step:07d}"


def capture_rng() -> dict[str, Any]:
    """Every RNG state a run draws from, as tensors and ints (so ``weights_only`` loading works)."""
    py = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def test_pause() -> None:
    """Test hook: sleep ``HWLM_TEST_SLOW_CKPT_WRITE`` seconds mid-write, so a kill can land there."""
    delay = float(os.environ.get("HWLM_TEST_SLOW_CKPT_WRITE") or 0)
    if delay > 0:
        time.sleep(delay)


def test_fail(path: Path) -> None:
    """Test hook: with ``HWLM_TEST_FAIL_CKPT_WRITE`` set, writing ``path`` fails as on a full disk."""
    if os.environ.get("HWLM_TEST_FAIL_CKPT_WRITE"):
        raise OSError(errno.ENOSPC, "No space left on device (HWLM_TEST_FAIL_CKPT_WRITE)", str(path))


def _torch_save(obj: Any, f: Any) -> None:
    """``torch.save(obj, f)``, except that a Ctrl-C during the write stays a KeyboardInterrupt: torch's C++
    writer turns the interrupt raised in its Python write call into a RuntimeError ("enforce fail at
    inline_container.cc") whose context is the interrupt, which would end a run with a traceback.

    The interrupted writer is also destroyed here, while ``f`` is still open: the tracebacks hold torch.save's
    frames and so its zip writer, whose destructor writes the archive's end into ``f``. Freed later, after the
    caller's ``with open`` has closed the file, that write raises inside a C++ destructor and the process
    aborts (SIGABRT, "write to closed file"; found by a CI run of test_second_ctrl_c_stops_at_once)."""
    try:
        torch.save(obj, f)
        return
    except RuntimeError as exc:
        if not isinstance(exc.__context__, KeyboardInterrupt):
            raise
        _drop_tracebacks(exc)
    except KeyboardInterrupt as exc:
        _drop_tracebacks(exc)
    gc.collect()  # the writer, should a frame sit in a reference cycle: its end goes into the open (.tmp) file
    raise KeyboardInterrupt


def _drop_tracebacks(exc: BaseException | None) -> None:
    """Clear the tracebacks of ``exc`` and the exceptions it chains, releasing the frames they hold."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__context__ or exc.__cause__


def _save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file, so that a full disk surfaces as OSError(ENOSPC)
    (given a path, torch reports it as an opaque RuntimeError from its C++ writer)."""
    test_fail(path)
    with open(path, "wb") as f:
        _torch_save(obj, f)


def _save_torch_encrypted(obj: Any, path: Path, key: bytes) -> None:
    """``torch.save`` into memory, written encrypted: no plaintext reaches the disk."""
    test_fail(path)
    buf = io.BytesIO()
    _torch_save(obj, buf)
    atomic_write_bytes(path, encrypt_bytes(buf.getbuffer(), key))  # a view of the buffer: no copy


def load_torch_file(path: Path, key: bytes | None, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` of a checkpoint file, decrypted in memory when ``key`` is given."""
    if key is None:
        return torch.load(path, map_location=map_location, weights_only=True)
    return torch.load(io.BytesIO(read_encrypted(path, key)), map_location=map_location, weights_only=True)


def _weights_bytes(model: nn.Module, metadata: dict[str, str]) -> bytes:
    """What ``safetensors.torch.save_model`` writes, as bytes (tied tensors stored once, the same way)."""
    from safetensors.torch import _remove_duplicate_names, save

    state = model.state_dict()
    for kept, removed in _remove_duplicate_names(state).items():
        for name in removed:
            metadata.setdefault(name, kept)
            del state[name]
    return save({k: v.contiguous() for k, v in state.items()}, metadata=metadata)


def _load_weights_bytes(model: nn.Module, data: bytes | bytearray, device: str) -> None:
    """``safetensors.torch.load_model(strict=True)`` from bytes: tied names count as present."""
    from safetensors.torch import _remove_duplicate_names, load

    state = {k: v.to(device) for k, v in load(bytes(data)).items()}  # safetensors takes bytes, not a bytearray
    removed = _remove_duplicate_names(model.state_dict(), preferred_names=list(state))
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = set(result.missing_keys), list(result.unexpected_keys)
    for group in removed.values():
        for name in group:
            if name in missing:
                missing.remove(name)
            else:
                unexpected.append(name)
    if missing or unexpected:
        raise RuntimeError(f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}")


def write_weights(path: Path, model: nn.Module, metadata: dict[str, str], key: bytes | None = None) -> None:
    """``model``'s weights as safetensors at ``path``; with ``key`` encrypted in memory first (no plaintext on
    disk). Every writer of a checkpoint's weights (training, classifiers, chat, compress) comes through here."""
    from safetensors.torch import save_model

    try:
        if key is None:
            save_model(model, str(path), metadata=metadata)
        else:
            atomic_write_bytes(path, encrypt_bytes(_weights_bytes(model, dict(metadata)), key))
    except Exception as exc:  # safetensors reports write failures as its own error type
        if isinstance(exc, (OSError, ResourceError)):
            raise
        raise ResourceError(f"cannot write {path}: {exc}; check free disk space") from None


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], config: dict[str, Any], tokenizer_file: Path | None,
                    keep: int, trainer_extra: dict[str, Any] | None = None, key: bytes | None = None,
                    extra_json: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` atomically, then drop all but the newest ``keep``.

    ``trainer_extra`` (e.g. the fp16 loss scaler's state) is stored beside the RNG states; ``extra_json``
    (``{name: object}``, e.g. a classifier's ``labels.json``) is written plain beside ``state.json``; a
    feature classifier has no ``tokenizer_file``. With ``key`` the weights, optimizer and trainer state
    are written encrypted (see the module docstring)."""
    final = Path(run_dir) / "checkpoints" / _step_name(step)
    remove_stale(final.parent)
    with atomic_dir(final) as tmp:
        write_weights(tmp / MODEL_FILE, model, {"format": "pt", "step": str(step)}, key)
        for obj, name in ((optimizer.state_dict(), "optimizer.pt"),
                          ({"rng": capture_rng(), **(trainer_extra or {})}, "trainer_state.pt")):
            if key is None:
                _save_torch(obj, tmp / name)
            else:
                _save_torch_encrypted(obj, tmp / name, key)
        atomic_write_json(tmp / "state.json", {"version": CKPT_VERSION, **state, "step": step})
        atomic_write_json(tmp / "config.json", config)
        for name, obj in (extra_json or {}).items():
            atomic_write_json(tmp / name, obj)
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
        test_pause()
        write_complete(tmp, step, key)
    prune_checkpoints(run_dir, keep)
    return final


def write_complete(folder: Path, step: int, key: bytes | None = None) -> None:
    """``COMPLETE`` (written last): every file's sha256 as stored, and the key id when encrypted."""
    done = {"version": CKPT_VERSION, "step": step, "files": complete_files(folder)}
    if key is not None:
        done["encryption"] = encryption_section(key)
    atomic_write_json(folder / "COMPLETE", done)


def complete_files(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (what COMPLETE lists)."""
    return {f.relative_to(folder).as_posix(): sha256_file(f) for f in sorted(folder.rglob("*")) if f.is_file()}


def remove_stale(root: Path) -> None:
    """Remove hidden leftovers (``.step-*``) of saves or prunes that a kill interrupted."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step-"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of ``run_dir``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    try:
        found = [(int(m.group(1)), p) for p in root.iterdir()
                 if p.is_dir() and (m := _STEP_DIR.match(p.name)) and (p / "COMPLETE").is_file()]
    except OSError as exc:
        raise CheckpointError(f"cannot read {root}: {exc.strerror or exc}; check the folder's permissions") from None
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` complete checkpoints (never fewer than one)."""
    for old in list_checkpoints(run_dir)[:-max(keep, 1)]:
        gone = old.with_name(f".{old.name}.deleting")
        try:
            os.replace(old, gone)  # one atomic step: from here on it no longer counts as complete
        except OSError:
            continue
        shutil.rmtree(gone, ignore_errors=True)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or the newest complete checkpoint of a run folder."""
    path = Path(path)
    if (path / "COMPLETE").is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a run folder or a checkpoint folder")
    if _STEP_DIR.match(path.name):
        raise CheckpointError(f"checkpoint {path} is incomplete (no COMPLETE file): it was interrupted while "
                              "saving; use an older checkpoint or the run folder")
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path} holds no complete checkpoint (looked in {path / 'checkpoints'}); "
                              "train first or give a checkpoint folder")
    return latest


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a checkpoint; a missing or broken one is a CheckpointError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing; the checkpoint is incomplete") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {path} cannot be read: {exc}") from None


class CorruptCheckpointError(CheckpointError):
    """A file that COMPLETE lists is missing or does not match its sha256: this checkpoint alone is bad
    (``--resume auto`` moves it aside and takes the one before). Errors that would hit every checkpoint
    alike (an unreadable folder, another model's config, an unknown format version) stay plain
    :class:`CheckpointError`."""


def checkpoint_key(ckpt: Path, key: bytes | None) -> bytes | None:
    """The key that opens checkpoint ``ckpt`` (``key``, else $HWLM_DATA_KEY), checked against the key id in
    COMPLETE; None for a plain checkpoint. A wrong key is WrongKeyError, a missing one a line naming the flag."""
    return key_for(f"checkpoint {ckpt}", read_json(ckpt / "COMPLETE").get("encryption"), key)


def is_encrypted_checkpoint(ckpt: Path) -> bool:
    """Whether checkpoint ``ckpt``'s COMPLETE records an encryption section (``--encrypt``)."""
    return bool(read_json(Path(ckpt) / "COMPLETE").get("encryption"))


def verify_checkpoint(ckpt: Path, key: bytes | None = None) -> dict[str, Any]:
    """Check COMPLETE's version and every file's sha256; return COMPLETE's contents.

    With the (checked) ``key`` of an encrypted checkpoint, a file that fails its sha256 is also
    authenticated chunk by chunk, so the message names the chunk that was changed."""
    done = read_json(ckpt / "COMPLETE")
    if done.get("version") != CKPT_VERSION:
        raise CheckpointError(f"checkpoint {ckpt} has format version {done.get('version')}; "
                              f"this hwlm reads version {CKPT_VERSION}")
    for name, digest in done.get("files", {}).items():
        f = ckpt / name
        if not f.is_file():
            raise CorruptCheckpointError(f"checkpoint {ckpt} lacks {name}; it is damaged, use an older one")
        try:
            actual = sha256_file(f)
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint file {f}: {exc.strerror or exc}; check the run "
                                  "folder's permissions") from None
        if actual != digest:
            where = ""
            if key is not None and is_encrypted(f):
                try:
                    check_chunks(f, key)
                except DataError as exc:
                    where = f" ({str(exc).removeprefix(f'{f}: ')})"
            raise CorruptCheckpointError(f"checkpoint file {f} does not match its sha256 in COMPLETE{where}; it is "
                                         "corrupt, use an older checkpoint")
    return done


def move_aside(ckpt: Path) -> Path:
    """Rename a corrupt checkpoint to ``corrupt-step-N-<UTC time>`` beside it (kept for a post-mortem:
    never deleted, and no longer listed, pruned or resumed from)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = ckpt.with_name(f"corrupt-{ckpt.name}-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = ckpt.with_name(f"corrupt-{ckpt.name}-{stamp}-{n}")
    try:
        os.replace(ckpt, dest)
    except OSError as exc:
        raise ResourceError(f"cannot move the corrupt checkpoint {ckpt} aside: {exc.strerror or exc}; "
                            "move or remove it by hand, then resume") from None
    return dest


def newest_valid_checkpoint(run_dir: Path, warn: Callable[[str], None], key: bytes | None = None) -> Path | None:
    """The newest checkpoint of ``run_dir`` that verifies, or None when there is none at all.

    A newer corrupt one (:class:`CorruptCheckpointError`) is moved aside with a warning naming it;
    any other error stops here with nothing moved: above all a wrong or missing key of an encrypted
    checkpoint (checked before its files), which says nothing about the files. If every checkpoint was
    corrupt, that is an error too: starting afresh would be a silent loss of the whole run.
    """
    moved = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        ckpt_key = checkpoint_key(ckpt, key)  # WrongKeyError / no key: stop here, nothing moved
        try:
            verify_checkpoint(ckpt, ckpt_key)
        except CorruptCheckpointError as exc:
            moved.append(move_aside(ckpt))
            warn(f"warning: {exc}; moved it aside to {moved[-1].name} and trying the one before")
            continue
        return ckpt
    if moved:
        raise CheckpointError(f"every checkpoint in {Path(run_dir) / 'checkpoints'} was corrupt (moved aside: "
                              f"{', '.join(p.name for p in moved)}); pass --resume none with a new --out to start "
                              "afresh, or resume from a copy you trust")
    return None


def resume_checkpoint(out: Path, resume: str, warn: Callable[[str], None], key: bytes | None = None) -> Path | None:
    """The checkpoint a run in ``out`` resumes from (``--resume none|auto|PATH``), or None for a fresh run.

    ``none`` refuses a folder that already holds checkpoints (a silent overwrite of a run); ``auto`` takes the
    newest one that verifies (:func:`newest_valid_checkpoint`); a path is resolved as given. Every trainer
    (language model, classifier, chat) resumes through here."""
    if resume == "none":
        existing = latest_checkpoint(out)
        if existing is not None:
            raise ConfigError(f"{out} already holds checkpoints (newest {existing.name}): pass --resume auto "
                              "to continue that run, or choose another --out folder")
        return None
    if resume == "auto":
        return newest_valid_checkpoint(out, warn, key)
    return resolve_checkpoint(Path(resume))


def check_same_model(ckpt: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise CheckpointError naming every model setting that differs between checkpoint and config."""
    diffs = [f"{k}={saved.get(k)!r} vs {current.get(k)!r}" for k in sorted(set(saved) | set(current))
             if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(f"checkpoint {ckpt} is from another model config (checkpoint vs now: "
                              f"{', '.join(diffs)}); use the same model settings or another --out folder")


def load_weights(ckpt: Path, model: nn.Module, device: str | torch.device = "cpu", key: bytes | None = None) -> None:
    """Load ``model.safetensors`` into ``model`` strictly; mismatches become a one-line CheckpointError.

    An encrypted checkpoint is decrypted in memory with ``key`` (else $HWLM_DATA_KEY), all of it before
    any tensor reaches the model: a chunk that fails authentication loads nothing."""
    from safetensors.torch import load_model

    key = checkpoint_key(ckpt, key)
    try:
        if key is None:
            load_model(model, str(ckpt / MODEL_FILE), strict=True, device=str(device))
        else:
            _load_weights_bytes(model, read_encrypted(ckpt / MODEL_FILE, key), str(device))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"weights in {ckpt} do not fit this model: {first}") from None


def restore_training(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     device: str | torch.device, key: bytes | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights, optimizer and RNG states from a verified checkpoint (decrypted with ``key`` if it
    is encrypted). Returns state.json and the rest of trainer_state.pt (what ``trainer_extra`` saved)."""
    key = checkpoint_key(ckpt, key)
    load_weights(ckpt, model, device, key)
    if not (ckpt / "optimizer.pt").is_file() and (ckpt / "dcp").is_dir():
        from hwlm.train.sharded import load_dcp_state  # an FSDP checkpoint, resumed unsharded

        load_dcp_state(ckpt, model, optimizer)
    try:
        if (ckpt / "optimizer.pt").is_file():
            optimizer.load_state_dict(load_torch_file(ckpt / "optimizer.pt", key, device))
        trainer = load_torch_file(ckpt / "trainer_state.pt", key, "cpu")
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"optimizer state in {ckpt} does not fit this run: {first}") from None
    restore_rng(trainer.pop("rng"))
    return read_json(ckpt / "state.json"), trainer
