"""Where distributed training slots in: the process's place in the job, model wrapping, grad sync.

Today hwlm trains in one process. Everything a DDP/FSDP run (``torchrun``) changes is in
this module, so that adding it touches nothing else:

- :func:`current_world` reads rank and world size once, from torchrun's environment.
- :func:`wrap_model` applies, in this order: ``torch.compile``, then (later) DDP/FSDP.
- :func:`grad_sync` is where ``model.no_sync()`` goes for all micro-batches but the last.
- :func:`mean_across` is where the logged loss is averaged over ranks.

The training loop already builds its data loader with ``rank``/``world_size`` and only
writes logs and checkpoints on rank 0.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

from torch import nn

from hwlm.errors import ConfigError

__all__ = ["World", "current_world", "wrap_model", "grad_sync", "mean_across"]


@dataclass(frozen=True)
class World:
    """This process's rank among ``world_size`` processes (``local_rank`` on this host)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """Rank and world size from torchrun's RANK / WORLD_SIZE / LOCAL_RANK (one process without them)."""
    try:
        world = World(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                      local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if world.world_size > 1:
        raise ConfigError(f"started as {world.world_size} processes (WORLD_SIZE={world.world_size}), but "
                          "distributed training is not implemented yet: run one process")
    return world


def wrap_model(model: nn.Module, compile_model: bool, world: World) -> nn.Module:
    """The module the training step calls: compiled if asked (DDP/FSDP would wrap here, after compile)."""
    if compile_model:
        import torch
        model = torch.compile(model)  # type: ignore[assignment]
    return model


@contextlib.contextmanager
def grad_sync(model: nn.Module, last_micro_batch: bool) -> Iterator[None]:
    """Context for one micro-batch's forward+backward; DDP would skip the all-reduce unless last."""
    yield


def mean_across(value: float, world: World) -> float:
    """The mean of ``value`` over ranks (one process: the value itself)."""
    return value
