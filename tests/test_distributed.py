"""Several processes on the CPU (gloo): DDP and FSDP follow the one-process loss curve, resume with
another world size, two torchrun agents as two nodes, and faults (NaN on one rank, full disk) end
every rank with one line. Each test launches ``hwlm train --nproc 2`` (or two agents) in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hwlm.train import checkpoint as ckpt_io
from hwlm.train import train
from hwlm.train.launch import free_port
from hwlm.train.logs import read_log
from tiny import prepare_tiny, tiny_cfg

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 20
GLOBAL_BATCH = 4
COMMON = ["--model", "debug", "--precision", "fp32", "--device", "cpu", "--no-progress", "--no-tensorboard",
          "--eval-batches", "2", "--log-interval", "1", "--peak-flops", "1e9", "--lr", "3e-3", "--min-lr", "3e-4",
          "--warmup", "2", "--eval-interval", "0", "--ckpt-interval", "10", "--max-steps", str(STEPS)]


def hwlm(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m hwlm ARGS`` in a fresh process, one intra-op thread per process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("HWLM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "hwlm", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run)]


def assert_close_curves(a: list[float], b: list[float], tol: float) -> None:
    assert len(a) == len(b) == STEPS
    worst = max(abs(x - y) for x, y in zip(a, b))
    assert worst <= tol, f"loss curves differ by {worst:.3g} > {tol}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("dist"))


def one_proc(data: Path, out: Path, grad_accum: int = 1, resume: str = "none") -> Path:
    """One process with the global batch of two (batch GLOBAL_BATCH / grad_accum), settings as COMMON."""
    r = train(tiny_cfg(data, out, batch_size=GLOBAL_BATCH // grad_accum, grad_accum=grad_accum, max_steps=STEPS,
                       eval_interval=0, ckpt_interval=10, resume=resume))
    assert r.steps == STEPS and r.world_size == 1
    return out


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_proc(data, tmp_path_factory.mktemp("ref") / "run")


@pytest.fixture(scope="module")
def reference_accum(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gradient accumulation over 2 micro-batches: what DDP's no_sync / FSDP's deferred reduce must match."""
    return one_proc(data, tmp_path_factory.mktemp("ref2") / "run", grad_accum=2)


def two_procs(data: Path, out: Path, strategy: str, *extra: str, env: dict[str, str] | None = None,
              grad_accum: int = 1) -> subprocess.CompletedProcess:
    return hwlm("train", "--nproc", "2", "--strategy", strategy, "--data", str(data), "--out", str(out),
                "--batch-size", str(GLOBAL_BATCH // 2 // grad_accum), "--grad-accum", str(grad_accum),
                *COMMON, *extra, env=env)


def resume_single(data: Path, run: Path, grad_accum: int) -> Path:
    """Copy ``run``, drop its last checkpoint and finish it in one process with the same global batch."""
    copy = run.parent / (run.name + "-single")
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / f"step-{STEPS:07d}")
    return one_proc(data, copy, grad_accum, resume="auto")


@pytest.mark.parametrize("strategy,tol", [("ddp", 1e-5), ("fsdp", 1e-4)])
def test_two_processes_follow_one_and_resume_in_one(strategy: str, tol: float, data: Path, reference_accum: Path,
                                                   tmp_path: Path) -> None:
    """With 2 micro-batches per step, so the skipped gradient sync of the first one is covered too."""
    reference = reference_accum
    out = tmp_path / strategy
    proc = ok(two_procs(data, out, strategy, "--json", grad_accum=2))
    result = json.loads(proc.stdout)                      # rank 0 alone prints the result
    assert result["world_size"] == 2 and result["strategy"] == strategy and result["steps"] == STEPS
    assert result["tokens"] == STEPS * GLOBAL_BATCH * 32  # global batch = batch_size * world_size * grad_accum
    assert_close_curves(losses(reference), losses(out), tol)
    saved = json.loads((out / "config.json").read_text())["runtime"]
    assert saved["world_size"] == 2 and saved["strategy"] == strategy
    if strategy == "fsdp":
        assert (out / "checkpoints" / f"step-{STEPS:07d}" / "dcp" / ".metadata").is_file()
    # Another world size: 2 processes -> 1 (FSDP through DCP resharding), same curve and weights.
    resumed = resume_single(data, out, grad_accum=2)
    assert_close_curves(losses(reference), losses(resumed), tol)
    a = load_file(str(reference / "checkpoints" / f"step-{STEPS:07d}" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / f"step-{STEPS:07d}" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_two_nodes_on_one_host(data: Path, reference: Path, tmp_path: Path) -> None:
    out, port = tmp_path / "run", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HWLM_DEBUG", None)
    nodes = [subprocess.Popen([sys.executable, "-m", "hwlm", "train", "--nnodes", "2", "--node-rank", str(r),
                               "--nproc", "1", "--master", f"127.0.0.1:{port}", "--strategy", "ddp",
                               "--data", str(data), "--out", str(out), "--batch-size", str(GLOBAL_BATCH // 2),
                               *COMMON], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in (0, 1)]
    outputs = [n.communicate(timeout=240) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "trained 20 steps" in outputs[0][0] and outputs[1][0] == ""   # global rank 0 lives on node 0
    assert json.loads((out / "config.json").read_text())["runtime"]["world_size"] == 2
    assert_close_curves(losses(reference), losses(out), 1e-5)


def test_nan_on_one_rank_skips_on_all_then_stops(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = two_procs(data, out, "ddp", "--ckpt-interval", "5", "--max-nonfinite", "3",
                     env={"HWLM_TEST_NAN_STEPS": "3,6,7,8", "HWLM_TEST_NAN_RANK": "1"})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("hwlm: error: training loss was NaN/inf for 3 steps in a row (steps 6-8); lower --lr, use "
                    "--precision fp32 or check the data; last good checkpoint: step-0000005")
    assert "Traceback" not in proc.stderr
    assert [p.name for p in ckpt_io.list_checkpoints(out)] == ["step-0000005"]
    ckpt_io.verify_checkpoint(out / "checkpoints" / "step-0000005")
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6, 7]
    assert log[2]["loss"] is None and log[2]["nonfinite_steps"] == 1 and log[-1]["nonfinite_steps"] == 3
    assert all(r["loss"] is not None for r in log[3:5])


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_full_disk_keeps_the_previous_checkpoint(strategy: str, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    ok(two_procs(data, out, strategy, "--ckpt-interval", "0", "--max-steps", "3"))
    before = ckpt_io.list_checkpoints(out)
    proc = two_procs(data, out, strategy, "--ckpt-interval", "0", "--max-steps", "6", "--resume", "auto",
                     env={"HWLM_TEST_FAIL_CKPT_WRITE": "1"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("hwlm: error: disk full while writing ") and "step-0000006" in lines[-1]
    assert "Traceback" not in proc.stderr
    assert ckpt_io.list_checkpoints(out) == before
    ckpt_io.verify_checkpoint(before[-1])
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")] == []
