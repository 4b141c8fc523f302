"""The launch decision (``--nproc auto``, ``--strategy auto``) on fake machines, and the launcher's inputs."""

from __future__ import annotations

import pytest

from hwlm.errors import ConfigError
from hwlm.formulas import ArchSpec
from hwlm.train.launch import SMALL_DATA_TOKENS, decide, parse_master, training_bytes

GiB = 2**30
BIG_DATA = 10**10


def plan(nproc: str | int = "auto", strategy: str = "auto", **kw):
    facts = dict(data_tokens=BIG_DATA, cuda_count=8, device_memory=80 * GiB, cpu_cores=64, model_bytes=20 * GiB)
    return decide(nproc, strategy, **{**facts, **kw})


def test_cpu_only_is_one_process() -> None:
    p = plan(cuda_count=0, device_memory=None)
    assert (p.nproc, p.strategy) == (1, "single") and "CPU only (64 cores)" in p.reason


def test_one_gpu_is_one_process() -> None:
    p = plan(cuda_count=1)
    assert (p.nproc, p.strategy) == (1, "single") and "one GPU" in p.reason


def test_small_data_is_one_process() -> None:
    p = plan(data_tokens=SMALL_DATA_TOKENS - 1)
    assert (p.nproc, p.strategy) == (1, "single") and "little data" in p.reason


def test_fits_one_device_is_ddp_on_every_gpu() -> None:
    p = plan()
    assert (p.nproc, p.strategy) == (8, "ddp") and "fits one device" in p.reason and "20.0 GiB" in p.reason


def test_too_big_for_one_device_is_fsdp() -> None:
    p = plan(model_bytes=200 * GiB)
    assert (p.nproc, p.strategy) == (8, "fsdp") and "does not fit" in p.reason and "80.0 GiB" in p.reason


def test_explicit_counts_and_strategies() -> None:
    assert (plan(2).nproc, plan(2).strategy) == (2, "ddp")
    assert plan(2, "fsdp").strategy == "fsdp"
    assert plan(1).strategy == "single"
    assert plan(1, "fsdp").strategy == "fsdp"                 # one-GPU FSDP check under torchrun
    p = plan(2, cuda_count=0, device_memory=None)             # CPU: several processes when asked
    assert (p.nproc, p.strategy) == (2, "ddp")
    assert plan(4, nnodes=2).reason.startswith("4 process(es) per node x 2 node(s)")


@pytest.mark.parametrize("kw,message", [
    (dict(nproc="two"), "--nproc 'two' is not a number"),
    (dict(nproc=0), "--nproc 0 must be at least 1"),
    (dict(nproc=9), r"more processes than the 8 GPU\(s\)"),
    (dict(strategy="zero3"), "strategy 'zero3' is unknown; choose auto, ddp or fsdp"),
])
def test_bad_values(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan(**kw)


def test_training_bytes_grow_with_model_and_batch() -> None:
    small = ArchSpec(vocab_size=512, d_model=16, n_layers=2, n_heads=2, max_positions=32)
    big = ArchSpec(vocab_size=50257, d_model=4096, n_layers=32, n_heads=32, max_positions=2048)
    assert training_bytes(big, 1, 2048) > 16 * 6e9          # 16 bytes for each of the ~6.5B parameters
    assert training_bytes(small, 8, 32) > training_bytes(small, 1, 32)


def test_parse_master() -> None:
    assert parse_master("10.0.0.1:29500") == ("10.0.0.1", 29500)
    assert parse_master(None) == ("127.0.0.1", None)
    for bad in ("10.0.0.1", ":29500", "host:port", "host:70000"):
        with pytest.raises(ConfigError, match="must be ADDR:PORT"):
            parse_master(bad)


def test_worker_flags_round_trip() -> None:
    """The launcher rebuilds the command line from parsed values; parsing it again gives them back."""
    from hwlm.cli import build_parser
    from hwlm.cli.train import _flags
    from hwlm.config import overrides_from_args, resolve
    from hwlm.train.config import TrainConfig

    values = {"lr": 0.1 / 3, "betas": (0.9, 0.99), "max_tokens": None, "tensorboard": False, "progress": True,
              "strategy": "fsdp", "batch_size": 3, "max_steps": 7}
    args = build_parser().parse_args(["train", *_flags(values)])
    cfg = resolve(TrainConfig, overrides=overrides_from_args(args, TrainConfig))
    assert {k: getattr(cfg, k) for k in values} == values


def test_nproc_under_torchrun_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    from hwlm.cli import main

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(k, v)
    assert main(["train", "--nproc", "2", "--data", str(tmp_path), "--max-steps", "1", "--model", "debug"]) == 1
    assert "already runs under torchrun: drop --nproc" in capsys.readouterr().err
