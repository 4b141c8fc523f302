"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler about to preempt).

While :func:`hwlm.train.train` steps, :class:`StopSignals` turns the first SIGINT or SIGTERM into a
request: the current optimizer step finishes, a checkpoint is written, and ``train`` returns with
``TrainResult.stopped_by`` set; ``hwlm train`` then prints the command that resumes and exits
128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process killed by
it. A second Ctrl-C raises KeyboardInterrupt at once (the checkpoint being written, if any, is
dropped whole: see :func:`hwlm.io.atomic_dir`). Further SIGTERMs are ignored: the scheduler's
SIGKILL after its grace period is the hard stop.

Under torchrun every rank must stop after the same step, or the next collective hangs: the
request travels in the all-reduce the loop already makes each step (the "was the loss finite"
flag), so agreeing costs no extra collective (:func:`agree_step`).

Set-up (building the model, the precision trial) runs before the handlers are installed: a
Ctrl-C there stops at once, with nothing to save.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
from types import FrameType
from typing import Any, Iterable

__all__ = ["StopSignals", "StoppedBySignal", "agree_step", "exit_code", "resume_command", "RESUME_COMMAND_ENV"]

# Set by `hwlm train --nproc N` for its workers: the user's command, so that rank 0 prints it and
# not the worker's own flags.
RESUME_COMMAND_ENV = "HWLM_RESUME_COMMAND"
_HANDLED = (signal.SIGINT, signal.SIGTERM)


class StoppedBySignal(KeyboardInterrupt):
    """The launcher (``hwlm train --nproc N``) got SIGINT/SIGTERM and its workers stopped: ``signame``."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


def exit_code(signame: str) -> int:
    """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signal.Signals[signame])


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`signum` instead of killing.

    Handlers can only be installed from the main thread; elsewhere (a library caller's worker
    thread) the context does nothing and the signals keep their usual effect.
    """

    def __init__(self, announce: bool = True) -> None:
        self.signum: int = 0  # 0: no stop asked
        self.announce = announce  # say so on stderr (rank 0 only, under torchrun)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in _HANDLED:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now
            return
        self.signum = signum
        if not self.announce:
            return
        # os.write, not print: a handler may run while the main thread holds stderr's buffer lock.
        name = signal.Signals(signum).name
        again = "; Ctrl-C again to stop at once" if signum == signal.SIGINT else ""
        os.write(2, f"hwlm: {name}: finishing this step and writing a checkpoint{again}\n".encode())

    @property
    def name(self) -> str | None:
        """``"SIGINT"`` / ``"SIGTERM"`` once a stop was asked, else None."""
        return signal.Signals(self.signum).name if self.signum else None


def agree_step(finite: bool, signum: int, world: Any) -> tuple[bool, int]:
    """(finite on every rank, the signal any rank got) in one all-reduce of two numbers: MIN of
    ``finite`` and of ``-signum``. ``world`` is a :class:`hwlm.train.parallel.World`."""
    if not world.distributed or world.world_size == 1:
        return finite, signum
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if finite else 0.0, -float(signum)], dtype=torch.float64, device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t[0].item()), int(-t[1].item())


def resume_command(argv: Iterable[str]) -> str:
    """The ``hwlm train`` command line ``argv`` with ``--resume auto`` in place of any --resume.

    >>> resume_command(["train", "--data", "d", "--resume", "none", "--out", "my run"])
    "hwlm train --data d --out 'my run' --resume auto"
    """
    env = os.environ.get(RESUME_COMMAND_ENV)
    if env:
        return env
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            out.append(arg)
    return shlex.join(["hwlm", *out, "--resume", "auto"])
