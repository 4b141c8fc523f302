"""Atomic file and folder writes: temp first, fsync, then rename.

A reader never sees a half-written file: either the old one or the new one.
OS errors that a user can fix (full disk, no permission) become
:class:`~hwlm.errors.ResourceError` with one line saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hwlm.errors import ResourceError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_dir",
    "fsync_dir",
    "publish_dir",
    "sha256_file",
    "resource_error",
]


def resource_error(exc: OSError, path: str | os.PathLike) -> ResourceError:
    """Turn an OSError into a one-line ResourceError naming the path and the fix."""
    if exc.errno == errno.ENOSPC:
        return ResourceError(f"disk full while writing {path}: free some space or choose another --out folder")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ResourceError(f"cannot write to {path}: permission denied; choose a writable --out folder")
    return ResourceError(f"cannot write {path}: {exc.strerror or exc}")


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that a rename inside it survives a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, then rename."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as exc:
        raise resource_error(exc, path) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON with a trailing newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success fsync it and rename it to ``path``.

    An existing ``path`` is replaced only after the new folder is complete. On any
    error the temp folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise resource_error(exc, path) from exc
    try:
        yield tmp
        publish_dir(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise resource_error(exc, path) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync every file of the finished folder ``tmp``, then rename it to ``path``.

    An older ``path`` is first renamed aside and removed only after the new folder is in place,
    so a crash leaves either the old or the new folder under ``path``. Raises OSError.
    """
    tmp, path = Path(tmp), Path(path)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
