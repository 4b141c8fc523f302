"""Tests for hwlm.io: atomic writes leave either the old or the new content, never a mix."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hwlm.errors import ResourceError
from hwlm.io import atomic_dir, atomic_write_json, atomic_write_text, sha256_file


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "a" / "f.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_json(p, {"x": 2})
    assert p.read_text().strip().endswith("}") and '"x": 2' in p.read_text()
    assert [q.name for q in p.parent.iterdir()] == ["f.json"]


def test_failed_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ResourceError, match="disk full while writing .*f.txt"):
        atomic_write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_dir_commits_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        (d / "w").write_text("1")
    assert (target / "w").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "w").write_text("2")
            raise RuntimeError("crash mid-write")
    assert (target / "w").read_text() == "1"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_folder_is_resource_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(ResourceError, match="permission denied"):
        atomic_write_text(ro / "f", "x")


def test_sha256(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


_HOLD = """
import sys, time
from hwlm.io import folder_lock
with folder_lock(sys.argv[1], what="hwlm train"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _start_holder(folder: Path) -> "subprocess.Popen[str]":
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def test_folder_lock_names_the_holder_and_kill_9_frees_it(tmp_path: Path) -> None:
    from hwlm.io import folder_lock
    folder = tmp_path / "run"
    holder = _start_holder(folder)
    try:
        with pytest.raises(ResourceError) as err:
            with folder_lock(folder, what="hwlm prepare"):
                pass
        msg = str(err.value)
        assert "\n" not in msg
        assert msg == (f"{folder} is being written by process {holder.pid} (hwlm train); "
                       "wait for it or use another --out")
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs in the holder
        holder.wait()
    with folder_lock(folder, what="hwlm prepare"):
        assert (folder / ".lock").read_text().split() == [str(os.getpid()), "hwlm", "prepare"]


def test_folder_lock_is_shared_by_nested_calls_and_released_after(tmp_path: Path) -> None:
    from hwlm.io import folder_lock
    with folder_lock(tmp_path / "r"):
        with folder_lock(tmp_path / "r" / "." ):
            pass
    holder = _start_holder(tmp_path / "r")  # the lock is free again once the outer block ends
    holder.kill()
    holder.wait()


_HOLD_OUTPUT = """
import sys, time
from hwlm.io import atomic_dir
with atomic_dir(sys.argv[1], what="hwlm compress") as tmp:
    print("locked", flush=True)
    time.sleep(120)
"""


def test_atomic_dir_with_a_command_has_one_writer_and_kill_9_leaves_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys
    out = tmp_path / "small"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_OUTPUT, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResourceError, match=f"^{out} is being written by process {holder.pid} "
                                                r"\(hwlm compress\); wait for it or use another --out$"):
            with atomic_dir(out, what="hwlm export"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()  # the killed writer published nothing
    with atomic_dir(out, what="hwlm export") as tmp:
        (tmp / "f").write_text("x")
    assert (out / "f").read_text() == "x"
    assert not (tmp_path / ".small.lock").exists()  # no lock file is left beside the output


_APPEND = """
import sys
from hwlm.io import append_line
for i in range(300):
    append_line(sys.argv[1], sys.argv[2] + str(i) + "-" + "x" * 5000)
"""


def test_append_line_from_two_processes_keeps_lines_whole(tmp_path: Path) -> None:
    import subprocess
    import sys
    log = tmp_path / "log.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", _APPEND, str(log), tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = log.read_text().splitlines()
    assert len(lines) == 600
    assert all(line[0] in "ab" and line.endswith("-" + "x" * 5000) for line in lines)
    assert sorted(lines) == sorted(f"{t}{i}-" + "x" * 5000 for t in "ab" for i in range(300))
