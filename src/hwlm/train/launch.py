"""How many processes a run uses and how they split the model, and starting them through torchrun.

:func:`decide` is the one place where ``--nproc auto`` and ``--strategy auto`` are resolved, from
plain numbers (torch-free, so tests feed it fake machines):

- one process when there is one device, or the data is too small to be worth several;
- on a CPU host, one process: intra-op threads already use every core, and DDP between processes
  on one host only adds the gradient all-reduce (benchmarks/ddp_speed.py measures the ratio);
- DDP (a full copy of the model per device) when the model's training memory fits one device;
- FSDP (parameters, gradients and optimizer state sharded over devices) when it does not.

Training memory is :func:`hwlm.formulas.training_memory`, the planner's figure for one device: 16 bytes
per parameter (fp32 weights, gradients and AdamW's two moments), the tensors autograd saves, counted
from the model, and the loss's logits.

:func:`launch` starts ``nproc`` workers of ``python -m hwlm train ...`` with
``torch.distributed.run``'s own launcher (the same code as the ``torchrun`` command), in this
process, so that a failed worker ends the command with that worker's one-line error.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hwlm.errors import ConfigError, HwlmError
from hwlm.formulas import ArchSpec, training_memory

if TYPE_CHECKING:
    from hwlm.train.resolve import ResolvedRun

__all__ = ["LaunchPlan", "decide", "plan_launch", "choose_strategy", "training_bytes", "SMALL_DATA_TOKENS", "launch",
           "free_port", "parse_master", "ERROR_DIR_ENV"]

SMALL_DATA_TOKENS = 5_000_000   # below this a single device finishes an epoch in minutes
ERROR_DIR_ENV = "HWLM_LAUNCH_ERRORS"  # workers write their one-line error here for the launcher


@dataclass(frozen=True)
class LaunchPlan:
    """Processes per node, how they share the model (``single`` | ``ddp`` | ``fsdp``) and why."""

    nproc: int
    strategy: str
    reason: str


def training_bytes(spec: ArchSpec, batch_size: int, block_size: int, precision: str = "bf16", *,
                   compiled: bool = False, device_kind: str = "cuda", recompute: str = "none") -> int:
    """Bytes one device needs to train ``spec`` unsharded with micro-batch ``batch_size`` (GPUs train in
    bf16 autocast by default; only they make this decision, a CPU host is not memory-bound here). The
    question is whether DDP fits, whose gradient buckets live for the whole run: gradients at the forward."""
    return int(training_memory(spec, batch_size, block_size, precision, recompute=recompute, compiled=compiled,
                               device_kind=device_kind, gradients_at_forward=True).total)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def decide(nproc: str | int, strategy: str, *, data_tokens: int, cuda_count: int,
           device_memory: int | None, cpu_cores: int, model_bytes: int, nnodes: int = 1) -> LaunchPlan:
    """Resolve ``nproc`` (``'auto'`` or a number) and ``strategy`` (``auto``|``ddp``|``fsdp``).

    ``device_memory`` is one GPU's memory (None on a CPU host: memory is then not the limit);
    ``model_bytes`` comes from :func:`training_bytes`.

    >>> decide("auto", "auto", data_tokens=10**9, cuda_count=8, device_memory=80 * 2**30,
    ...        cpu_cores=64, model_bytes=20 * 2**30).strategy
    'ddp'
    """
    if strategy not in ("auto", "ddp", "fsdp"):
        raise ConfigError(f"strategy {strategy!r} is unknown; choose auto, ddp or fsdp")
    need = f"training needs ~{_gib(model_bytes)} per device" + (
        f", one device has {_gib(device_memory)}" if device_memory is not None else "")
    if nproc == "auto":
        devices = cuda_count if cuda_count > 0 else 1
        if cuda_count == 0:
            return LaunchPlan(1, "single", f"auto: CPU only ({cpu_cores} cores): one process whose threads use "
                                           "every core (DDP between processes on one host only adds an all-reduce)")
        if devices * nnodes == 1:
            return LaunchPlan(1, "single", f"auto: one GPU, so one process ({need})")
        if data_tokens < SMALL_DATA_TOKENS and nnodes == 1:
            return LaunchPlan(1, "single", f"auto: {data_tokens:,} training tokens is little data "
                                           f"(< {SMALL_DATA_TOKENS:,}); one process avoids start-up and all-reduce cost")
        n = devices
    else:
        try:
            n = int(nproc)
        except ValueError:
            raise ConfigError(f"--nproc {nproc!r} is not a number; give a count like 2, or auto") from None
        if n < 1:
            raise ConfigError(f"--nproc {n} must be at least 1 (or auto)")
        if cuda_count and n > cuda_count:
            raise ConfigError(f"--nproc {n} asks for more processes than the {cuda_count} GPU(s) here "
                              "(one GPU per process); lower --nproc")
        if n * nnodes == 1 and strategy == "auto":
            return LaunchPlan(1, "single", "asked for one process")
    where = f"{n} process(es) per node x {nnodes} node(s)"
    chosen, why = choose_strategy(strategy, model_bytes, device_memory)
    return LaunchPlan(n, chosen, f"{where} with {chosen.upper()}: {why}")


def plan_launch(run: "ResolvedRun", nproc: str | int, nnodes: int = 1) -> LaunchPlan:
    """:func:`decide` for a resolved run on this machine: its CUDA devices (the smallest one's memory),
    its cores, the run's training tokens and the model's training memory at the run's micro-batch."""
    import torch

    from hwlm.device import select_device

    cfg, mcfg = run.train, run.model
    count = torch.cuda.device_count() if select_device(cfg.device).type == "cuda" else 0
    memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(count)) if count else None
    return decide(nproc, cfg.strategy, data_tokens=run.manifest["splits"]["train"]["tokens"], cuda_count=count,
                  device_memory=memory, cpu_cores=os.cpu_count() or 1, nnodes=nnodes,
                  model_bytes=training_bytes(mcfg.to_arch(), cfg.batch_size, mcfg.block_size,
                                             recompute=cfg.recompute))


def choose_strategy(strategy: str, model_bytes: int, device_memory: int | None) -> tuple[str, str]:
    """(``ddp`` or ``fsdp``, why) for a run of several processes; ``strategy`` auto decides by memory."""
    need = f"training needs ~{_gib(model_bytes)} per device" + (
        f", one device has {_gib(device_memory)}" if device_memory is not None else "")
    if strategy != "auto":
        return strategy, f"asked for ({need})"
    if device_memory is None or model_bytes <= device_memory:
        return "ddp", f"auto: the model fits one device ({need})"
    return "fsdp", f"auto: the model does not fit one device ({need}), so it is sharded"


def parse_master(master: str | None) -> tuple[str, int | None]:
    """``'ADDR:PORT'`` -> (addr, port); None -> ('127.0.0.1', None: pick a free port)."""
    if not master:
        return "127.0.0.1", None
    addr, sep, port = master.rpartition(":")
    if not sep or not addr or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--master {master!r} must be ADDR:PORT, like 10.0.0.1:29500")
    return addr, int(port)


def free_port() -> int:
    """A TCP port that was free a moment ago on this host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_error(folder: Path) -> str | None:
    """The one-line error of the lowest rank that wrote one."""
    found = sorted(folder.glob("rank-*.txt"), key=lambda p: int(p.stem.split("-")[1]))
    for f in found:
        text = f.read_text(encoding="utf-8").strip()
        if text:
            return text
    return None


def launch(worker_args: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
           master: str | None = None, threads_per_proc: int | None = None) -> None:
    """Run ``python -m hwlm <worker_args>`` as ``nproc`` torchrun workers on this node; raise on failure.

    A worker's :class:`~hwlm.errors.HwlmError` comes back as the same one-line message."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank {node_rank} must be in [0, --nnodes {nnodes})")
    addr, port = parse_master(master)
    if port is None:
        if nnodes > 1:
            raise ConfigError("--nnodes > 1 needs --master ADDR:PORT (node 0's address, the same on every node)")
        port = free_port()
    if threads_per_proc and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads_per_proc)
    if not os.environ.get("HWLM_DEBUG"):
        # torchelastic logs a traceback per failed worker; the worker's own line says it better.
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    argv = ["--nnodes", str(nnodes), "--nproc-per-node", str(nproc), "--node-rank", str(node_rank),
            "--master-addr", addr, "--master-port", str(port), "--max-restarts", "0",
            "-m", "hwlm", *worker_args]
    config, cmd, cmd_args = config_from_args(get_args_parser().parse_args(argv))
    with tempfile.TemporaryDirectory(prefix="hwlm-launch-") as errors:
        os.environ[ERROR_DIR_ENV] = errors
        try:
            elastic_launch(config, cmd)(*cmd_args)
        except ChildFailedError as exc:
            message = _first_error(Path(errors))
            if message:
                raise HwlmError(message) from None
            rank, failure = min(exc.failures.items())
            raise HwlmError(f"training worker rank {rank} failed (exit code {failure.exitcode}); "
                            "its traceback is above") from None
        except SignalException as exc:
            # Ctrl-C or SIGTERM: torchrun's agent passed it on to the workers and waited for them (they
            # checkpoint and exit 130/143). A KeyboardInterrupt, so that a caller that does not look says
            # "interrupted".
            from hwlm.train.signals import StoppedBySignal

            raise StoppedBySignal(exc.sigval.name) from None
        except Exception as exc:  # rendezvous time-outs and the like, from the agent itself
            if isinstance(exc, HwlmError):
                raise
            raise HwlmError(f"torchrun could not start the workers ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); check --master and --nnodes") from None
        finally:
            os.environ.pop(ERROR_DIR_ENV, None)
    sys.stdout.flush()
