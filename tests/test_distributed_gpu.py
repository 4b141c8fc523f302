"""The CUDA paths of distributed training, on one GPU: NCCL, a device per LOCAL_RANK, FSDP2 with a
bf16 MixedPrecisionPolicy and its DCP checkpoints, DDP under an external torchrun. Skipped without CUDA.

    .venv/bin/python -m pytest -m gpu tests/test_distributed_gpu.py -q
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

from hwlm.train import checkpoint as ckpt_io
from hwlm.train.logs import read_log
from tiny import prepare_tiny

pytestmark = [pytest.mark.gpu, pytest.mark.distributed,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ARGS = ["--model", "debug", "--batch-size", "8", "--device", "cuda", "--precision", "bf16", "--no-progress",
        "--no-tensorboard", "--eval-batches", "2", "--log-interval", "1", "--eval-interval", "0",
        "--ckpt-interval", "10", "--max-steps", "20", "--lr", "3e-3", "--warmup", "2", "--json"]


def run(cmd: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("gpu"))


def test_fsdp_bf16_nccl_one_gpu_and_resume(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "hwlm", "train", "--nproc", "1", "--strategy", "fsdp", "--data", str(data),
           "--out", str(out), *ARGS]
    r = run(cmd)
    assert (r["strategy"], r["world_size"], r["precision"], r["device"]) == ("fsdp", 1, "bf16", "cuda:0")
    log = read_log(out)
    assert log[-1]["loss"] < log[0]["loss"]
    last = out / "checkpoints" / "step-0000020"
    ckpt_io.verify_checkpoint(last)
    assert (last / "dcp" / ".metadata").is_file() and (last / "model.safetensors").is_file()
    shutil.rmtree(last)
    again = run([*cmd, "--resume", "auto"])
    assert again["steps"] == 20
    assert abs(read_log(out)[-1]["loss"] - log[-1]["loss"]) < 0.05   # bf16: close, not bit-equal


def test_ddp_under_external_torchrun_nccl(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    r = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "-m", "hwlm", "train",
             "--strategy", "ddp", "--data", str(data), "--out", str(out), *ARGS])
    assert (r["strategy"], r["world_size"], r["device"]) == ("ddp", 1, "cuda:0")
    assert json.loads((out / "config.json").read_text())["runtime"]["strategy"] == "ddp"
