"""The HTTP process's handle on the engine process: ``EngineClient`` (torch-free).

    client = EngineClient.start(cfg)           # spawns worker_main, waits for ("ready", info)
    client.submit(seqs)                        # from the event loop; QueueFull / EngineDown
    client.abort(seqs)                         # the client went away
    client.counts(), client.kv_usage(), client.threads()  # the engine's last reported numbers, for /metrics
    client.stop()

One reader thread receives the engine's per-step messages and hands each one to the event loop in a
single ``call_soon_threadsafe`` (so a step of 32 sequences wakes the loop once, not 32 times); there
each sequence's ``emit`` runs, and the step's metric observations go into the registry. Admission is
decided here, without a round trip: the live sequences (sent, not yet finished) may not exceed
``max_num_seqs + max_waiting``. If the engine process dies, every live sequence gets an error event,
``alive`` turns false (``/health`` answers 503) and new requests are refused with 503.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from hwlm.serve.engine.scheduler import QueueFull
from hwlm.serve.engine.sequence import Event, Sequence

__all__ = ["EngineClient", "EngineDown"]

log = logging.getLogger("hwlm.serve")


class EngineDown(Exception):
    """The engine process is not running (it crashed or was killed)."""


class EngineClient:
    def __init__(self, proc: Any, conn: Any, info: dict, max_live: int) -> None:
        self.proc, self.conn, self.info, self.max_live = proc, conn, info, max_live
        self.context, self.vocab_size = info["context"], info["vocab_size"]
        self.metrics: Any = None  # ServeMetrics, set by the server
        self.live: dict[int, Sequence] = {}
        self.error: str | None = None
        self._snapshot: tuple[int, int, float, int] = (0, 0, 0.0, info.get("threads", 0))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="hwlm-engine-reader", daemon=True)

    @classmethod
    def start(cls, cfg: Any) -> EngineClient:
        """Spawn the engine process for ``cfg`` (a ServeConfig) and return once it has loaded the model."""
        import multiprocessing

        from hwlm import errors
        from hwlm.serve.engine.worker import worker_main

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked locks or threads
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=worker_main, args=(child, cfg), name="hwlm-engine", daemon=True)
        proc.start()
        child.close()
        try:
            msg = parent.recv()
        except (EOFError, OSError):
            proc.join(timeout=5)
            raise errors.ResourceError(f"the engine process exited (code {proc.exitcode}) while loading "
                                       f"{cfg.run}: see the lines above") from None
        if msg[0] == "error":
            proc.join(timeout=10)
            raise getattr(errors, msg[1], errors.HwlmError)(msg[2])
        client = cls(proc, parent, msg[1], cfg.max_num_seqs + cfg.max_waiting)
        client._reader.start()
        return client

    # ---- called on the event loop ----------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.error is None

    def submit(self, seqs: list[Sequence]) -> None:
        """Send the choices of one request together, or raise QueueFull / EngineDown."""
        if self.error is not None:
            raise EngineDown(self.error)
        if len(self.live) + len(seqs) > self.max_live:
            running = self._snapshot[0]
            raise QueueFull(f"{running} running, {len(self.live) - running} waiting")
        self._loop = self._loop or asyncio.get_running_loop()
        for seq in seqs:
            self.live[seq.seq_id] = seq
        self._send(("submit", [(s.seq_id, s.prompt_ids, s.params, s.deadline, s.arrival) for s in seqs]))

    def abort(self, seqs: list[Sequence]) -> None:
        ids = [s.seq_id for s in seqs if s.seq_id in self.live]
        if ids and self.error is None:
            self._send(("abort", ids))

    def counts(self) -> tuple[int, int]:
        """(running, waiting) sequences: the engine's last report, plus those sent since."""
        running = self._snapshot[0]
        return running, max(self._snapshot[1], len(self.live) - running)

    def kv_usage(self) -> float:
        return self._snapshot[2]

    def threads(self) -> int:
        """The engine's torch threads in its last step (``--lone-threads`` while one row ran alone)."""
        return self._snapshot[3]

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self._send(("stop",))
            except EngineDown:
                pass
            self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        self.error = self.error or "the server is shutting down"
        self.conn.close()

    def _send(self, msg: tuple) -> None:
        with self._send_lock:
            try:
                self.conn.send(msg)
            except (OSError, ValueError):
                raise EngineDown(self.error or "the engine process is gone") from None

    # ---- the reader thread -----------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError, ValueError):
                break
            if msg[0] == "step":
                self._post(self._dispatch, msg[1], msg[2], msg[3])
        self.proc.join(timeout=2)
        code = self.proc.exitcode
        if self.error is None:
            log.error("the engine process exited (code %s)", code)
        self._post(self._die, f"the engine process exited (code {code})")

    def _post(self, fn: Callable, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            fn(*args)  # nothing submitted yet: no handler waits, and the state is ours alone
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed between the check and the call
            fn(*args)

    def _dispatch(self, events: list[tuple], snapshot: tuple[int, int, float, int], ops: list[tuple]) -> None:
        self._snapshot = snapshot
        if self.metrics is not None and ops:
            self.metrics.apply(ops)
        for seq_id, *fields in events:
            seq = self.live.get(seq_id)
            if seq is None:
                continue
            ev = Event(*fields)
            if ev.finish_reason is not None:
                del self.live[seq_id]
            seq.emit(ev)

    def _die(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        self._snapshot = (0, 0, 0.0, self._snapshot[3])
        for seq in list(self.live.values()):
            seq.emit(Event("", [], finish_reason="stop", error=self.error))
        self.live.clear()
