"""Atomic file and folder writes: temp first, fsync, then rename.

A reader never sees a half-written file: either the old one or the new one.
Two writers never share a folder: :func:`folder_lock` holds an exclusive ``flock`` on
``<folder>/.lock`` for a whole command, and :func:`append_line` locks an append-only file
(a log) for one line. ``flock`` locks belong to the open file, so the kernel drops them when
the process dies: a ``kill -9`` leaves no stale lock behind.
OS errors that a user can fix (full disk, no permission) become
:class:`~hwlm.errors.ResourceError` with one line saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
    "folder_lock",
    "append_line",
    "LOCK_FILE",
]

LOCK_FILE = ".lock"
# Folders this process already holds (realpath -> depth): a nested folder_lock on one of them
# (the CLI and the library function it calls) must not lock against itself, since a second
# open() of the file is a second flock owner.
_held: dict[str, int] = {}


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
def atomic_dir(path: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success fsync it and rename it to ``path``.

    An existing ``path`` is replaced only after the new folder is complete. On any
    error the temp folder is removed and ``path`` is left as it was.

    With ``what`` (the command, e.g. ``"hwlm compress"``) the output has one writer: an flock on
    ``.<name>.lock`` beside ``path`` is held from the start to the rename (then removed), and a second writer of
    the same ``path`` stops at once with one line naming the holder (as :func:`folder_lock`).
    Inside a folder that is already locked (checkpoints of a run) leave it out.
    """
    path = Path(path)
    with contextlib.ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise resource_error(exc, path) from exc
        if what is not None:
            stack.enter_context(_exclusive(path.parent / f".{path.name}.lock", path, what, remove=True))
        yield from _build_then_publish(path)


def _build_then_publish(path: Path) -> Iterator[Path]:
    try:
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


def _holder(lock_path: Path) -> str:
    # The holder writes "pid what" right after it locks; between those two moments the file is empty.
    try:
        pid, _, what = lock_path.read_text(encoding="utf-8").strip().partition(" ")
    except OSError:
        return "another process"
    if not pid.isdigit():
        return "another process"
    return f"process {pid} ({what})" if what else f"process {pid}"


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike, what: str = "hwlm") -> Iterator[Path]:
    """Hold an exclusive lock on the folder ``path`` (created if missing) while the block runs.

    The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``<path>/.lock``, which then holds the holder's
    pid and ``what`` (the command, for the message). A second writer, in this or another
    process, gets one line naming the holder:

        ResourceError: runs/r is being written by process 1234 (hwlm train); wait for it or use another --out

    The lock file itself stays (deleting it would let a third process lock a file the second
    one is already waiting on). Nested ``folder_lock`` calls on one folder in one process share
    the outer lock.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise resource_error(exc, folder) from exc
    key = os.path.realpath(folder)
    if key in _held:
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    with _exclusive(folder / LOCK_FILE, folder, what):
        _held[key] = 1
        try:
            yield folder
        finally:
            del _held[key]


@contextlib.contextmanager
def _exclusive(lock_path: Path, folder: Path, what: str, remove: bool = False) -> Iterator[None]:
    """``flock(LOCK_EX | LOCK_NB)`` on ``lock_path`` (holding pid and ``what``), or one line naming the holder.

    ``remove`` unlinks the lock file while still holding it, for locks beside an output rather
    than inside a folder: a writer that opened the old file in that instant gets its lock on an
    unlinked file and publishes its own complete folder by rename, so the output is never mixed.
    """
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise resource_error(exc, lock_path) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResourceError(f"{folder} is being written by {_holder(lock_path)}; "
                                "wait for it or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode("utf-8"), 0)
        try:
            yield
        finally:
            if remove:
                with contextlib.suppress(OSError):
                    os.unlink(lock_path)
    finally:
        os.close(fd)  # closing the last descriptor of the open file releases the flock


def append_line(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` plus a newline to ``path`` under an exclusive ``flock``, then flush it.

    For append-only files that several processes may write (run logs): each line lands whole,
    never interleaved with another writer's. The lock is held only for this one write.
    """
    path = Path(path)
    data = (text.rstrip("\n") + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:  # a write to a regular file may still be short (a signal, a full disk)
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError as exc:
        raise resource_error(exc, path) from exc
