"""SIGINT and SIGTERM stop a run cleanly: the step finishes, a checkpoint is written, the exit code is
130 or 143 with the command that resumes, and resuming with that command ends bit-identical to a run
that never stopped. A second Ctrl-C stops at once."""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hwlm.train.checkpoint import latest_checkpoint
from hwlm.train.logs import read_log
from hwlm.train.signals import resume_command

pytestmark = pytest.mark.slow

STEPS = 16
ARGS = ["--model", "debug", "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--no-progress",
        "--no-tensorboard", "--eval-batches", "2", "--log-interval", "1", "--peak-flops", "1e9", "--lr", "3e-3",
        "--min-lr", "3e-4", "--warmup", "2", "--eval-interval", "5", "--ckpt-interval", "1000",
        "--max-steps", str(STEPS)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _hwlm(argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hwlm", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**ENV, **kw.pop("env", {})}, **kw)


def _weights(run: Path) -> dict:
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    return load_file(str(ckpt / "model.safetensors"))


def _last_step(run: Path) -> int:
    try:
        log = read_log(run)
    except (OSError, ValueError):
        return 0
    return log[-1]["step"] if log else 0


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while _last_step(run) < step:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < end, "the run never reached the step"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _hwlm(["train", "--data", str(tiny_data), "--out", str(out), *ARGS])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return _weights(out)


@pytest.mark.parametrize("sig, code, seed", [(signal.SIGINT, 130, 11), (signal.SIGTERM, 143, 12)])
def test_signal_checkpoints_and_the_printed_command_resumes_bit_identical(
        sig: signal.Signals, code: int, seed: int, reference: dict, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_data), "--out", str(out), *ARGS]
    proc = _hwlm(argv)
    _wait_for_step(proc, out, random.Random(seed).randint(2, STEPS - 4))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-2000:]
    stopped = _last_step(out)
    assert stopped < STEPS
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == f"step-{stopped:07d}"  # ckpt_interval 1000: only the signal saved
    lines = err.strip().splitlines()
    assert lines[-2] == f"hwlm: stopped by {sig.name} after step {stopped}; checkpoint {ckpt}"
    assert lines[-1].startswith("hwlm: resume with: hwlm train ")
    cmd = shlex.split(lines[-1].removeprefix("hwlm: resume with: "))
    assert cmd[-2:] == ["--resume", "auto"]
    resumed = _hwlm(cmd[1:])  # the printed command, run as `python -m hwlm ...`
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert f"resumed from {ckpt} at step {stopped}" in err
    final = _weights(out)
    assert final.keys() == reference.keys()
    for name, tensor in reference.items():
        assert final[name].equal(tensor), name
    assert [r["step"] for r in read_log(out) if "loss" in r] == list(range(1, STEPS + 1))


def test_second_ctrl_c_stops_at_once(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Each checkpoint write sleeps 20 s (test hook), so only a second Ctrl-C can end the run soon.
    proc = _hwlm(["train", "--data", str(tiny_data), "--out", str(out), *ARGS],
                 env={"HWLM_TEST_SLOW_CKPT_WRITE": "20"})
    _wait_for_step(proc, out, 2)
    proc.send_signal(signal.SIGINT)
    ckpts = out / "checkpoints"
    end = time.monotonic() + 120
    while not (ckpts.is_dir() and any(p.name.endswith(".tmp") for p in ckpts.iterdir())):
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # while the checkpoint is being written
    _, err = proc.communicate(timeout=15)  # well before the 20 s write would end
    assert proc.returncode == 130, err[-2000:]  # a traceback here is the bug this test found once
    assert err.strip().splitlines()[-1] == "hwlm: interrupted"
    assert latest_checkpoint(out) is None and not any(ckpts.iterdir())  # the half-written one is gone


def test_resume_command_replaces_any_resume_flag() -> None:
    assert resume_command(["train", "--data", "d", "--resume=none", "--out", "my run"]) == \
        "hwlm train --data d --out 'my run' --resume auto"
    assert resume_command(["train", "--resume", "runs/x/checkpoints/step-0000004"]) == "hwlm train --resume auto"


@pytest.mark.distributed
def test_two_processes_stop_at_one_step_on_sigint_and_resume_bit_identical(tiny_data: Path, tmp_path: Path) -> None:
    two = [*ARGS, "--nproc", "2", "--strategy", "ddp", "--batch-size", "2", "--max-steps", "10"]  # last flag wins
    ref, out = tmp_path / "ref", tmp_path / "run"
    proc = _hwlm(["train", "--data", str(tiny_data), "--out", str(ref), *two])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    proc = _hwlm(["train", "--data", str(tiny_data), "--out", str(out), *two])
    _wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGINT)  # to the launcher; torchrun's agent passes it to both workers
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.count("finishing this step and writing a checkpoint") == 1  # rank 0 alone says it
    assert "hwlm: resume with:" in err.strip().splitlines()[-1]  # the launcher adds nothing after it
    stopped = next(int(ln.split("after step ")[1].split(";")[0]) for ln in err.splitlines() if "stopped by" in ln)
    assert latest_checkpoint(out).name == f"step-{stopped:07d}" and stopped < 10
    cmd = shlex.split(next(ln for ln in err.splitlines() if "resume with:" in ln).split("resume with: ")[1])
    assert "--nproc" in cmd
    resumed = _hwlm(cmd[1:])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    expected = _weights(ref)
    final = _weights(out)
    for name, tensor in expected.items():
        assert final[name].equal(tensor), name
