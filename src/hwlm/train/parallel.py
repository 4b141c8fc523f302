"""Data parallelism: the process's place in the job, model wrapping, grad sync, and agreeing across ranks.

Everything a ``torchrun`` run (DDP or FSDP2) changes is here:

- :func:`current_world` reads rank and world size once, from torchrun's environment
  (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR); :func:`init_distributed` joins the process
  group: gloo on the CPU, NCCL on CUDA with one GPU per local rank.
- :func:`shard_model` applies FSDP2 (``fully_shard``: each block, then the root, so that
  the tied embedding/output matrix lives in the root's group), with a bf16
  ``MixedPrecisionPolicy`` on CUDA; it runs *before* the optimizer is built, which must
  see the sharded parameters.
- :func:`wrap_model` applies, in this order: DDP (after the checkpoint is restored, since
  DDP broadcasts rank 0's weights), then ``torch.compile``.
- :func:`grad_sync` skips the gradient all-reduce / reduce-scatter on all micro-batches but the last.
- :func:`mean_across` and :func:`all_true` make every rank see the same numbers and decisions
  (logged loss, "this step's loss was finite", "the checkpoint was written").
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
from torch import nn

from hwlm.errors import ConfigError, HwlmError, ResourceError

__all__ = ["World", "under_torchrun", "current_world", "init_distributed", "shutdown", "shard_model",
           "wrap_model", "grad_sync", "mean_across", "all_true", "broadcast_object", "barrier", "agree"]

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")


@dataclass(frozen=True)
class World:
    """This process's rank among ``world_size`` processes (``local_rank`` on this host).

    ``distributed`` is True under torchrun (even with one process), once the process group
    exists; ``device`` is where collective tensors live (the rank's GPU under NCCL)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """True when torchrun (or ``hwlm train --nproc N``) started this process."""
    return all(k in os.environ for k in _TORCHRUN_ENV)


def current_world() -> World:
    """Rank and world size from torchrun's RANK / WORLD_SIZE / LOCAL_RANK (one process without them)."""
    if not under_torchrun():
        return World()
    try:
        rank, size, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={size}; start the job with torchrun")
    return World(rank=rank, world_size=size, local_rank=local)


def init_distributed(device_type: str) -> World:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA); one process without torchrun."""
    import torch.distributed as dist

    world = current_world()
    if not under_torchrun():
        return world
    device = "cpu"
    if device_type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {world.local_rank} has no GPU: this host has {torch.cuda.device_count()}; "
                              "start at most one process per GPU")
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(device)
    elif device_type != "cpu":
        raise ConfigError(f"distributed training runs on CUDA or the CPU, not {device_type}; use --device cuda or cpu")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": torch.device(device)} if device_type == "cuda" else {}
        dist.init_process_group(backend, **kwargs)
    return replace(world, distributed=True, device=device)


def shutdown(world: World) -> None:
    """Leave the process group (a no-op for one plain process).

    A barrier first: a rank that tears its gloo pairs down while a peer still has traffic in
    flight (rank 0 writing the last checkpoint, say) makes that peer's gloo thread abort the
    process at exit ("terminate called without an active exception", seen in CI).
    """
    import torch.distributed as dist

    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_model(model: nn.Module, precision: str, device_type: str) -> nn.Module:
    """FSDP2 in place: each Transformer block is one all-gather unit, the root holds the rest."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {}
    if device_type == "cuda" and precision in ("bf16", "fp16"):
        # Gather and compute in low precision; reduce gradients in fp32 (torchtitan's default).
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    blocks = getattr(model, "h", [])
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again at once by backward: keep them gathered.
        fully_shard(block, reshard_after_forward=i < len(blocks) - 1, **kwargs)
    fully_shard(model, **kwargs)
    return model


def wrap_model(model: nn.Module, compile_model: bool, world: World, strategy: str = "single") -> nn.Module:
    """The module the training step calls: DDP-wrapped when asked, then compiled if asked."""
    if strategy == "ddp" and world.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(world.device).index] if world.device.startswith("cuda") else None
        model = DDP(model, device_ids=ids)
    if compile_model:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # through torch.compile's wrapper


@contextlib.contextmanager
def grad_sync(model: nn.Module, last_micro_batch: bool) -> Iterator[None]:
    """Context for one micro-batch's forward+backward: gradients are synchronised only on the last."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    inner = _inner(model)
    if isinstance(inner, DDP) and not last_micro_batch:
        with inner.no_sync():
            yield
        return
    if hasattr(inner, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter only on the last
        inner.set_requires_gradient_sync(last_micro_batch)
    yield


def _all_reduce(value: float, world: World, op: str) -> float:
    import torch.distributed as dist

    if not world.distributed or world.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MIN)
    return float(t.item())


def mean_across(value: float, world: World) -> float:
    """The mean of ``value`` over ranks (one process: the value itself)."""
    return _all_reduce(value, world, "sum") / world.world_size if world.world_size > 1 else value


def all_true(flag: bool, world: World) -> bool:
    """True only when ``flag`` is True on every rank."""
    return bool(_all_reduce(1.0 if flag else 0.0, world, "min"))


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (decisions that must not differ, like a timed precision trial)."""
    import torch.distributed as dist

    if not world.distributed or world.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    import torch.distributed as dist

    if world.distributed and world.world_size > 1:
        dist.barrier()


def agree(err: HwlmError | None, world: World, others: str, cleanup: Callable[[], None] | None = None) -> None:
    """Raise on every rank if ``err`` happened on any rank: a rank that failed alone would leave the
    others waiting in the next collective. The failing rank raises its own error, the rest
    ``ResourceError(others)`` (the launcher shows the lowest rank's line)."""
    if all_true(err is None, world):
        return
    if cleanup is not None and world.is_main:
        cleanup()
    raise err if err is not None else ResourceError(others)
