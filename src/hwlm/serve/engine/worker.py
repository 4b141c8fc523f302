"""The engine in its own process: ``worker_main(conn, cfg)`` is the child's whole life.

The HTTP process (``client.EngineClient``) starts this with multiprocessing's ``spawn``, so the model,
the scheduler and the KV cache live in a process whose GIL no HTTP work competes for. The child
loads the run, picks the precision (``--dtype auto`` times both), builds an :class:`LLMEngine`, says
``("ready", info)`` (or ``("error", class, message)``: a bad run is one line in the parent) and then:

* reads commands: ``("submit", [(seq_id, prompt_ids, params, deadline, arrival), ...])``,
  ``("abort", [seq_id, ...])``, ``("stop",)``; the pipe closing (the parent died, even by SIGKILL)
  ends the child too;
* after each engine step sends one message, ``("step", events, (running, waiting, kv_usage),
  metric_ops)``: every sequence's event of that step as a plain tuple, the counts the gauges show and
  the metric observations. Text is decoded here (stop strings need it, and it keeps the HTTP process's
  work per token to relaying), so the message is a few bytes per sequence per step.

Both processes read ``time.monotonic()`` from the same clock (CLOCK_MONOTONIC), so deadlines and
arrival times cross the boundary as plain floats.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from typing import Any

__all__ = ["worker_main", "fastest_dtype", "event_tuple", "engine_threads", "lone_threads"]


def event_tuple(seq_id: int, ev: Any) -> tuple:
    return (seq_id, ev.text, ev.token_ids, ev.logprobs, ev.finish_reason, ev.prompt_tokens, ev.completion_tokens,
            ev.error, ev.detail)


def worker_main(conn: Any, cfg: Any) -> None:
    """Run the engine for ``cfg`` (a ServeConfig), talking over ``conn`` until told to stop or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    try:
        worker = _Worker(conn, *_build(cfg))
    except BaseException as exc:  # noqa: BLE001 - every start-up failure becomes one line in the parent
        from hwlm.errors import HwlmError

        kind = type(exc).__name__ if isinstance(exc, HwlmError) else "HwlmError"
        message = str(exc) if isinstance(exc, HwlmError) else f"the engine did not start: {type(exc).__name__}: {exc}"
        conn.send(("error", kind, message))
        conn.close()
        return
    worker.run()


class _Worker:
    """The command loop (this thread) around the engine (its own thread), and the step messages."""

    def __init__(self, conn: Any, engine: Any, recorder: Any, info: dict) -> None:
        self.conn, self.engine, self.recorder, self.info = conn, engine, recorder, info
        self.lock = threading.Lock()  # the command thread also sends (a refused submit)
        self.pending: list[tuple] = []  # this step's events; only the engine thread touches it
        self.seqs: dict[int, Any] = {}  # live sequences by id, for aborts
        tok = engine.tokenizer
        self.decode = lambda ids: tok.decode(ids, skip_special_tokens=False)
        engine.after_step = self.flush
        pause = float(os.environ.get("HWLM_TEST_STEP_PAUSE", "0") or 0)
        if pause > 0:  # test hook: an engine slow enough that deadlines and full queues happen on any machine
            engine.after_step = lambda: (self.flush(), time.sleep(pause))

    def run(self) -> None:
        """The engine loop in this (the main) thread, where ``_build`` loaded and timed the model, and the
        commands in a thread of their own: one OpenMP team in the process (``LLMEngine.run`` says why)."""
        self.send(("ready", self.info))
        threading.Thread(target=self._commands, name="hwlm-commands", daemon=True).start()
        self.engine.run()

    def _commands(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                if msg[0] == "submit":
                    self.submit(msg[1])
                elif msg[0] == "abort":
                    self.engine.abort([self.seqs[i] for i in msg[1] if i in self.seqs])
                elif msg[0] == "stop":
                    break
        except (EOFError, OSError):
            os._exit(0)  # the HTTP process is gone: nobody is left to serve
        self.engine.stop()

    def send(self, msg: tuple) -> None:
        with self.lock:
            try:
                self.conn.send(msg)
            except OSError:
                os._exit(0)

    def submit(self, items: list[tuple]) -> None:
        from hwlm.serve.engine.scheduler import QueueFull
        from hwlm.serve.engine.sequence import Sequence

        batch = [Sequence(prompt_ids, params, self._emitter(seq_id), self.decode, deadline=deadline, seq_id=seq_id,
                          arrival=arrival) for seq_id, prompt_ids, params, deadline, arrival in items]
        for seq in batch:
            self.seqs[seq.seq_id] = seq  # before the engine can finish it
        try:
            self.engine.submit(batch)
        except QueueFull:  # the parent counts conservatively, so at most a race: fail these choices
            for seq in batch:
                self.seqs.pop(seq.seq_id, None)
            events = [(seq.seq_id, "", [], [], "stop", 0, 0, "the server is at capacity: retry shortly", None)
                      for seq in batch]
            self.send(("step", events, self.counts(), []))

    def _emitter(self, seq_id: int) -> Any:
        return lambda ev: self.pending.append(event_tuple(seq_id, ev))

    def counts(self) -> tuple[int, int, float, int]:
        running, waiting = self.engine.counts()
        return running, waiting, self.engine.kv_usage(), self.engine.threads

    def flush(self) -> None:
        """After each engine step: that step's events, counts and metric observations in one message."""
        ops = self.recorder.take()
        if not self.pending and not ops:
            return
        events, self.pending[:] = list(self.pending), []
        for e in events:
            if e[4] is not None:  # finished
                self.seqs.pop(e[0], None)
        self.send(("step", events, self.counts(), ops))


def _build(cfg: Any) -> tuple[Any, Any, dict]:
    """(engine, metrics recorder, info for the parent) for ``cfg``."""
    import torch

    from hwlm.crypt import optional_key
    from hwlm.device import select_device
    from hwlm.serve.engine.llm_engine import EngineConfig, LLMEngine
    from hwlm.serve.metrics import MetricsRecorder
    from hwlm.train.load import load_model

    threads, lone = engine_threads(cfg.engine_threads), lone_threads(cfg.lone_threads)
    torch.set_num_threads(threads)
    key = optional_key(cfg.key_file)  # read here: the key never crosses the pipe
    loaded = load_model(cfg.run, "cpu" if cfg.backend == "onnx" else select_device(cfg.device).device, key)
    model, runner, dtype, backend = _runner(cfg, loaded, lone)
    recorder = MetricsRecorder()
    engine = LLMEngine(model, loaded.tokenizer, loaded.eot_id,
                       EngineConfig(cfg.max_num_seqs, cfg.max_waiting, cfg.prefill_budget, threads, lone,
                                    lone_probe=cfg.lone_threads == 0), recorder, runner)
    compiled = None
    if cfg.compile:
        # at the lone row's threads: inductor fixes a kernel's OpenMP threads when it writes it
        torch.set_num_threads(lone)
        compiled = engine.runner.compile_lone()
        torch.set_num_threads(threads)
    info = {"checkpoint": str(loaded.path), "eot_id": loaded.eot_id, "run_config": loaded.run_config,
            "context": engine.context, "vocab_size": loaded.model_cfg.vocab_size, "dtype": dtype,
            "backend": backend, "cache_bytes": engine.runner.cache_bytes, "pid": os.getpid(),
            "threads": threads, "lone_threads": lone, "compiled": compiled}
    return engine, recorder, info


def engine_threads(asked: int) -> int:
    """``asked``, or for 0 every core this process may use, at most ``OMP_NUM_THREADS``, at least 1.

    Sessions 4-7 kept a core off the engine for the HTTP process and the clients (as vLLM's CPU back end
    does, ``VLLM_CPU_NUM_OF_RESERVED_CPU``), because on 2 cores the engine at 2 threads used 1.0-1.15
    cores and decoded slower than at 1. That was the worker's two OpenMP teams (``LLMEngine.run`` says
    why), not the HTTP process: with the engine stepping in the thread that loaded the model, 2 threads
    on 2 cores served ``mid`` bf16 at 170 / 858-1,017 / 1,424-1,592 tokens/s at 1 / 8 / 32 clients
    against 159-160 / 742-870 / 1,297-1,403 with one core kept off, in the same runs (docs/benchmarks.md,
    serving, session 8). Measured on 2 cores only.
    """
    if asked > 0:
        return asked
    cores, cap = _cores()
    return max(1, min(cores, cap))


def lone_threads(asked: int) -> int:
    """``asked``, or for 0 every core this process may use, at most ``OMP_NUM_THREADS``: a lone row's threads.

    A step of one row while nothing waits may run on these (``LLMEngine.step_threads``); the HTTP process
    then needs only a small part of a core. For 0, where this differs from the batch threads (an explicit
    ``--engine-threads``), the engine also times lone steps at both and keeps the faster
    (``hwlm.serve.engine.threads.LoneThreads``). The same count as :func:`engine_threads`'s default."""
    return engine_threads(asked)


def _cores() -> tuple[int, int]:
    """(cores this process may use, the ``OMP_NUM_THREADS`` cap or the cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cap = int((os.environ.get("OMP_NUM_THREADS") or str(cores)).split(",")[0])  # "4,2" (nested levels): 4
    return cores, cap


def _runner(cfg: Any, loaded: Any, lone: int) -> tuple[Any, Any, str, str]:
    """(torch model or None, runner or None for the default ModelRunner, precision, back end as told).

    A hybrid's start-up choice times torch's lone row on ``lone`` threads (as the engine runs one) and
    onnxruntime's on the engine's threads: on this shared 2-core machine onnxruntime at 2 threads won that
    timing and then served a lone stream at half the speed (docs/benchmarks.md, session 6), while torch's
    lone step has ``LoneThreads`` to fall back to one thread when two stall."""
    import torch

    model = loaded.model
    onnx_model = None
    if cfg.onnx is not None:  # checked against the weights as saved, before any cast
        from hwlm.export.onnx import OnnxModel, weights_fingerprint

        # A hybrid runs torch between ONNX calls on the same cores: onnxruntime's threads must not spin-wait
        # through torch's steps (HWLM_ONNX_SPIN=always|run|never overrides, for A/B runs).
        spin = os.environ.get("HWLM_ONNX_SPIN") or ("always" if cfg.backend == "onnx" else "run")
        onnx_model = OnnxModel.load(cfg.onnx, spin=spin)
        onnx_model.check_matches(loaded.model_cfg, weights_fingerprint(model), f"run {cfg.run}")
    if cfg.backend == "onnx":
        from hwlm.serve.engine.onnx_runner import OnnxRunner

        return None, OnnxRunner(onnx_model, cfg.max_num_seqs), "fp32", "onnx"
    dtype = fastest_dtype(model, cfg.max_num_seqs) if cfg.dtype == "auto" else cfg.dtype
    if dtype == "bf16":
        model.to(torch.bfloat16)
    if onnx_model is None:  # torch, or auto without an export
        return model, None, dtype, "torch"
    from hwlm.serve.engine.model_runner import ModelRunner
    from hwlm.serve.engine.onnx_runner import HybridRunner, single_row_faster_in_onnx

    torch_runner = ModelRunner(model, cfg.max_num_seqs)
    in_onnx = single_row_faster_in_onnx(torch_runner, onnx_model, lone)
    return (model, HybridRunner(torch_runner, onnx_model, in_onnx), dtype,
            f"auto ({'lone rows in onnx' if in_onnx else 'all torch'})")


def fastest_dtype(model: Any, slots: int, steps: int = 8) -> str:
    """fp32 or bf16, whichever decodes a batch of min(8, slots) rows faster here (a few timed steps each).

    The two take turns step by step, so a burst of other work on the machine lands on both alike."""
    import torch

    from hwlm.serve.engine.model_runner import ModelRunner

    tensors = list(model.state_dict().values())
    if any(t.dtype != torch.float32 for t in tensors):
        return "fp32"  # a compressed run (int8/int4 weights) or a half-precision one stays as it was saved
    rows = min(8, slots)
    runners = {"fp32": ModelRunner(model, rows), "bf16": ModelRunner(copy.deepcopy(model).to(torch.bfloat16), rows)}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        for s in range(rows):
            runner.prefill([0] * 16, s, 0)
    for step in range(steps):
        for name, runner in runners.items():
            t = time.perf_counter()
            runner.decode([1] * rows, list(range(rows)), [16 + step] * rows)
            times[name].append(time.perf_counter() - t)
    median = {name: sorted(ts[1:])[len(ts[1:]) // 2] for name, ts in times.items()}  # the first step warms up
    return min(median, key=median.get)
