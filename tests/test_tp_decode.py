"""Tensor-parallel decoding: shards computed in threads sum to the one-process logits; two gloo processes
under torchrun give the same logits within 1e-5 and the same greedy text; a split that does not divide
the heads is one line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from hwlm.cli import main
from hwlm.errors import ConfigError
from hwlm.model import ModelConfig, Transformer
from hwlm.model.functional import empty_past, forward_past
from hwlm.model.tp import check_tp, shard_layers
from hwlm.train.launch import free_port


def model_of(name: str, **kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_name(name, vocab_size=64, **kw)).eval()


class ThreadSum:
    """An all-reduce (sum) between ``n`` threads: what gloo does between processes, in one process."""

    def __init__(self, n: int) -> None:
        self.n, self.barrier, self.parts = n, threading.Barrier(n), {}

    def reduce(self, rank: int, t: torch.Tensor) -> torch.Tensor:
        self.parts[rank] = t.clone()
        self.barrier.wait()
        total = sum(self.parts[r] for r in range(self.n))
        self.barrier.wait()  # everyone has read the parts before the next reduce overwrites them
        t.copy_(total)
        return t


@pytest.mark.parametrize("name, world", [("debug", 2), ("llama-tiny", 2), ("tiny", 4)])
def test_sharded_forward_equals_one_process(name: str, world: int) -> None:
    """Each rank's heads and MLP units with a summing reduce: the logits and the KV past of one process."""
    model = model_of(name)
    idx = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        want, _ = model(idx)
    shards = [shard_layers(model, r, world) for r in range(world)]
    ring, got = ThreadSum(world), {}

    def rank_main(r: int) -> None:
        with torch.no_grad():
            past = empty_past(model, 2, shards[r][0].n_kv_head)
            a, past = forward_past(model, idx[:, :5], past, shards[r], lambda t: ring.reduce(r, t))
            b, past = forward_past(model, idx[:, 5:], past, shards[r], lambda t: ring.reduce(r, t))
        got[r] = torch.cat([a, b], dim=1), past

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r in range(world):
        torch.testing.assert_close(got[r][0], want, rtol=0, atol=1e-5)
    assert got[0][1][0][0].size(1) == model.cfg.n_kv_head // world  # each rank caches only its own heads


@pytest.mark.parametrize("world, message", [
    (3, "--nproc 3 does not divide the model's 2 attention heads .* choose one of 1, 2"),
    (0, "--nproc 0 must be at least 1"),
])
def test_a_split_that_does_not_divide_is_refused(world: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_tp(ModelConfig.from_name("debug", vocab_size=64), world)


def test_cli_nproc_that_does_not_divide_is_one_line(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "--run", str(tiny_run), "--nproc", "3", "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--nproc 3 does not divide the model's 2 attention heads" in err and len(err.splitlines()) == 1
    assert main(["generate", "--run", str(tiny_run), "--nproc", "2", "--draft", str(tiny_run)]) == 1
    assert "--draft and --nproc do not combine" in capsys.readouterr().err
    assert main(["generate", "--run", str(tiny_run), "--compile", "--backend", "onnx", "--onnx", str(tiny_run)]) == 1
    assert "--backend onnx and --compile do not combine" in capsys.readouterr().err


WORKER = """
import sys, torch
from hwlm.model.tp import TensorParallel
from hwlm.train.load import load_model
tp = TensorParallel.start_group("cpu")
loaded = load_model(sys.argv[1], "cpu")
tp.shard(loaded.model)
idx = torch.tensor([[5, 9, 2, 7, 11, 3]])
logits, past = tp.forward(idx[:, :4])
step, past = tp.forward(idx[:, 4:], past)
tokens = list(tp.generate([5, 9, 2], 12, temperature=0))
if tp.rank == 0:
    torch.save({"logits": torch.cat([logits, step], 1), "tokens": tokens}, sys.argv[2])
tp.finish()
"""


def torchrun(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(free_port()), str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_gloo_processes_equal_one(tiny_run: Path, tmp_path: Path) -> None:
    from hwlm.model import generate
    from hwlm.train.load import load_model

    script = tmp_path / "tp_worker.py"
    script.write_text(WORKER, encoding="utf-8")
    proc = torchrun(script, str(tiny_run), str(tmp_path / "out.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    model = load_model(tiny_run).model
    with torch.no_grad():
        want, _ = model(torch.tensor([[5, 9, 2, 7, 11, 3]]))
    torch.testing.assert_close(got["logits"], want, rtol=0, atol=1e-5)
    assert got["tokens"] == list(generate(model, [5, 9, 2], 12, temperature=0))


@pytest.mark.distributed
@pytest.mark.slow
def test_cli_generate_nproc_2_prints_the_one_process_text(tiny_run: Path) -> None:
    args = ["generate", "--run", str(tiny_run), "--prompt", "The cat", "--max-new-tokens", "40", "--temperature", "0",
            "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *extra: subprocess.run([sys.executable, "-m", "hwlm", *args, *extra],  # noqa: E731
                                        capture_output=True, text=True, env=env, timeout=300)
    one, two = run(), run("--nproc", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout == one.stdout
