"""Checkpoints survive kill -9: a run killed at seeded random moments (once in the middle of a
checkpoint write) and resumed with ``--resume auto`` each time ends bit-identical to a run that was
never interrupted, and neither log.jsonl nor TensorBoard holds a step twice.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hwlm.train.logs import read_log
from tiny import prepare_tiny

pytestmark = pytest.mark.slow

STEPS = 24
ARGS = ["--model", "debug", "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--no-progress",
        "--tensorboard", "--eval-batches", "2", "--log-interval", "1", "--peak-flops", "1e9", "--lr", "3e-3",
        "--min-lr", "3e-4", "--warmup", "2", "--eval-interval", "6", "--ckpt-interval", "2",
        "--max-steps", str(STEPS), "--resume", "auto"]


def start(data: Path, out: Path, slow_write: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HWLM_TEST_SLOW_CKPT_WRITE": str(slow_write)}
    return subprocess.Popen([sys.executable, "-m", "hwlm", "train", "--data", str(data), "--out", str(out), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(proc: subprocess.Popen, cond, timeout: float = 120.0) -> bool:
    """Poll ``cond()`` until true (True) or the process ended first (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the training run")


def last_step(out: Path) -> int:
    try:
        log = read_log(out)
    except (OSError, ValueError):
        return 0
    return log[-1]["step"] if log else 0


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL ``proc`` if it still runs; True if it did."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    return alive


def test_kill_minus_9_and_resume_is_bit_identical(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = prepare_tiny(tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    proc = start(data, ref)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]

    rng = random.Random(1234)
    ckpts = out / "checkpoints"
    # 1: in the middle of a checkpoint write (its temp folder exists, COMPLETE not yet written).
    proc = start(data, out, slow_write=0.5)
    wait_for(proc, lambda: ckpts.is_dir() and any(p.name.endswith(".tmp") for p in ckpts.iterdir()))
    time.sleep(rng.uniform(0.05, 0.3))
    assert kill(proc)
    assert any(p.name.endswith(".tmp") for p in ckpts.iterdir())   # it really died mid-write
    # 2-4: at random moments once the resumed run has trained past where it restarted.
    kills = 0
    for _ in range(3):
        before = last_step(out)
        proc = start(data, out, slow_write=0.1)
        if wait_for(proc, lambda: last_step(out) > before):
            time.sleep(rng.uniform(0.0, 0.6))
        kills += kill(proc)
    assert kills >= 2   # the run is long enough (slow writes) for random kills to land inside it
    proc = start(data, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]

    final = f"step-{STEPS:07d}"
    a = load_file(str(ref / "checkpoints" / final / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / final / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = read_log(ref), read_log(out)
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a]          # each step once, none missing
    assert [r["loss"] for r in log_b] == [r["loss"] for r in log_a]
    assert [r.get("val_loss") for r in log_b] == [r.get("val_loss") for r in log_a]
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert [e.step for e in events.Scalars("val/loss")] == list(range(6, STEPS + 1, 6))
