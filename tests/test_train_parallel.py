"""hwlm.train.parallel in one process: torchrun's environment, and gradient sync skipped on all micro-batches
but the last (DDP's no_sync, FSDP2's set_requires_gradient_sync) in a real one-rank gloo group."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from hwlm.errors import ConfigError
from hwlm.model import ModelConfig, Transformer
from hwlm.train.launch import free_port
from hwlm.train.parallel import (World, all_true, current_world, grad_sync, mean_across, shard_model,
                                 under_torchrun, wrap_model)

ENV = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1"}


def test_world_from_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ENV:
        monkeypatch.delenv(k, raising=False)
    assert not under_torchrun() and current_world() == World()
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    w = current_world()
    assert under_torchrun() and (w.rank, w.world_size, w.local_rank, w.is_main) == (1, 4, 1, False)
    monkeypatch.setenv("RANK", "7")
    with pytest.raises(ConfigError, match="RANK=7 is outside WORLD_SIZE=4"):
        current_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="must be integers"):
        current_world()


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield World(distributed=True)
    finally:
        dist.destroy_process_group()


def test_ddp_syncs_only_on_the_last_micro_batch(one_rank_group: World) -> None:
    ddp = wrap_model(Transformer(ModelConfig.from_name("debug")), False, one_rank_group, "ddp")
    assert type(ddp).__name__ == "DistributedDataParallel"
    with grad_sync(ddp, last_micro_batch=False):
        assert ddp.require_backward_grad_sync is False
    with grad_sync(ddp, last_micro_batch=True):
        assert ddp.require_backward_grad_sync is True
    assert mean_across(3.0, one_rank_group) == 3.0 and all_true(True, one_rank_group)
    assert not all_true(False, one_rank_group)


def test_fsdp_defers_the_reduce_scatter(one_rank_group: World) -> None:
    model = shard_model(Transformer(ModelConfig.from_name("debug")), "fp32", "cpu")
    assert all(type(p).__name__ == "DTensor" for p in model.parameters())
    x = torch.randint(0, 512, (2, 32))
    with grad_sync(model, last_micro_batch=False):
        model(x, x)[1].backward()
    assert all(p.grad is None for p in model.parameters())      # kept unsharded, not reduced yet
    with grad_sync(model, last_micro_batch=True):
        model(x, x)[1].backward()
    assert all(p.grad is not None for p in model.parameters())  # reduced (both micro-batches) and sharded
