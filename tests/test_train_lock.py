"""One writer per folder: a second `hwlm train` or `hwlm prepare` on a folder in use stops with one
line naming the process that holds it (hwlm.io.folder_lock), and touches nothing there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwlm.errors import ResourceError

ARGS = ["--model", "debug", "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--no-progress",
        "--no-tensorboard", "--peak-flops", "1e9", "--eval-batches", "1", "--ckpt-interval", "5",
        "--resume", "auto"]


def _train(data: Path, out: Path, steps: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hwlm", "train", "--data", str(data), "--out", str(out),
                             "--max-steps", str(steps), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _holder_pid(folder: Path) -> int | None:
    try:
        pid, *_ = (folder / ".lock").read_text().split()
        return int(pid)
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_second_train_on_one_run_folder_stops_naming_the_first(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _train(tiny_data, out, steps=100_000)
    try:
        deadline = time.monotonic() + 120
        while _holder_pid(out) != first.pid:
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        second = _train(tiny_data, out, steps=10)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 1
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines[-1] == (f"hwlm: error: {out} is being written by process {first.pid} (hwlm train); "
                             "wait for it or use another --out"), err[-2000:]
        assert first.poll() is None  # the first run was not disturbed
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    # kill -9 left no stale lock: the folder can be locked again at once.
    from hwlm.io import folder_lock
    with folder_lock(out, what="hwlm train"):
        pass


_HOLD = """
import sys, time
from hwlm.io import folder_lock
with folder_lock(sys.argv[1], what="hwlm train"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_prepare_into_a_locked_folder_stops_and_leaves_it(tmp_path: Path) -> None:
    from hwlm.data import PrepareConfig, prepare

    text, out = tmp_path / "a.txt", tmp_path / "data"
    text.write_text("one paragraph.\n\nanother paragraph.\n", encoding="utf-8")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResourceError, match=rf"is being written by process {holder.pid} \(hwlm train\)"):
            prepare(PrepareConfig(inputs=[str(text)], out=out, vocab_size=260))
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
