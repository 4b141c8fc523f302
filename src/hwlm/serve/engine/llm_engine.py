"""The engine: one thread owns the model and runs scheduler steps while there is work.

    engine = LLMEngine(model, tokenizer, eot_id, EngineConfig(max_num_seqs=32))
    engine.start()          # the loop in its own thread; or engine.run() to loop in this one
    engine.submit([Sequence(prompt_ids, SamplingParams(max_tokens=16), emit, decode)])

Each step: drop cancelled and expired sequences (their slots are free at once), then one packed
forward (``ModelRunner.step``) that prefills new prompts within the token budget and decodes every
running sequence by one token, sample each row with its own
parameters (its own seeded generator, so a choice's tokens never depend on its neighbours), and
send each sequence an :class:`Event`. No HTTP here: callers give ``emit`` callbacks, and
``after_step`` (if given) runs after each step, so a process boundary can send one step's events
together (``hwlm.serve.engine.worker``). ``runner`` is any object with ``ModelRunner``'s ``step``,
``device``, ``context`` and ``num_slots`` (the ONNX back end's ``OnnxRunner``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from hwlm.model.generation import sample_next
from hwlm.serve.engine.model_runner import ModelRunner
from hwlm.serve.engine.scheduler import QueueFull, Scheduler
from hwlm.serve.engine.sequence import Event, Sequence, SeqStatus
from hwlm.serve.engine.threads import LoneThreads

__all__ = ["LLMEngine", "EngineConfig", "QueueFull"]

log = logging.getLogger("hwlm.serve")


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 32
    max_waiting: int = 64
    prefill_budget: int = 512
    threads: int = 0  # torch threads of a step of several rows (0: leave torch's setting alone)
    lone_threads: int = 0  # torch threads of a step of one row while nothing waits (0: the same as threads)
    lone_probe: bool = False  # time lone steps at threads and lone_threads and keep the faster (LoneThreads)


class LLMEngine:
    def __init__(self, model: Any, tokenizer: Any, eot_id: int | None, cfg: EngineConfig,
                 metrics: Any = None, runner: Any = None, after_step: Callable[[], None] | None = None) -> None:
        self.model, self.tokenizer, self.eot_id, self.cfg = model, tokenizer, eot_id, cfg
        self.runner = runner if runner is not None else ModelRunner(model, cfg.max_num_seqs)
        self.context = self.runner.context
        self.after_step = after_step
        self.scheduler = Scheduler(cfg.max_num_seqs, cfg.max_waiting, cfg.prefill_budget)
        self.metrics = metrics
        self._cond = threading.Condition()
        self._incoming: list[Sequence] = []
        self._stopped = False
        self.threads = cfg.threads or torch.get_num_threads()  # the engine thread's torch threads now
        self.thread_switches = 0
        self.lone = LoneThreads(self.threads, cfg.lone_threads, cfg.lone_probe) if cfg.lone_threads else None
        self._thread = threading.Thread(target=self._loop, name="hwlm-engine", daemon=True)

    # ---- called from other threads -------------------------------------------------------------
    def start(self) -> None:
        """Run the engine loop in a thread of its own."""
        self._thread.start()

    def run(self) -> None:
        """Run the engine loop in the calling thread until :meth:`stop` (called from another thread).

        Why a caller would: libgomp keeps one OpenMP thread team per thread that opens a parallel region,
        and once the teams' threads outnumber the cores every team's threads stop spin-waiting between
        regions (throttled spinning) and sleep, so each op of a step pays a futex wake. A model loaded and
        timed in the main thread at 2 threads, then stepped in an engine thread at 2, used 1.2 cores and
        decoded a lone ``mid`` bf16 row in 7.3-7.8 ms, against 4.1-4.2 ms on 2.0 cores with one team
        (docs/benchmarks.md, serving, session 8). The serve worker loads, times and steps in one thread."""
        self._loop()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue the choices of one request together, or raise QueueFull if they do not fit."""
        with self._cond:
            if not self.scheduler.has_room(len(seqs) + len(self._incoming)):
                raise QueueFull(f"{len(self.scheduler.running)} running, {len(self.scheduler.waiting)} waiting")
            for seq in seqs:
                if seq.params.seed is not None and seq.params.temperature > 0:
                    seq.generator = torch.Generator(device=self.runner.device).manual_seed(seq.params.seed)
            self._incoming.extend(seqs)
            self._cond.notify()

    def abort(self, seqs: list[Sequence]) -> None:
        """The client is gone: free these sequences' slots at the next step."""
        with self._cond:
            for seq in seqs:
                seq.cancelled = True
            self._cond.notify()

    def counts(self) -> tuple[int, int]:
        """(running, waiting) sequences, for metrics and 503 decisions."""
        return len(self.scheduler.running), len(self.scheduler.waiting) + len(self._incoming)

    def alone(self, rows: int) -> bool:
        """A step of ``rows`` rows is a lone row's: one row while nothing waits."""
        return self.lone is not None and rows == 1 and not self.scheduler.waiting and not self._incoming

    def step_threads(self, rows: int) -> int:
        """Torch threads for a step of ``rows`` rows: the :class:`LoneThreads` choice for a lone row.

        Why: a lone stream's step reads every weight for one row, and on one core that is the whole
        inter-token latency; the HTTP process then needs a small part of a core (0.1-0.2 on ``mid``). With
        a second sequence the step goes back to ``threads``. By default both are every core, so nothing
        switches; an explicit ``--engine-threads`` below the cores makes the lone row's count differ.
        ``torch.set_num_threads`` costs well under a microsecond, so the switch follows the batch step by step."""
        if self.alone(rows):
            return self.lone.pick()
        return self.cfg.threads or self.threads

    def _use_threads(self, n: int) -> None:
        if n != self.threads:
            torch.set_num_threads(n)
            self.threads, self.thread_switches = n, self.thread_switches + 1

    def kv_usage(self) -> float:
        """Fraction of the slot cache's positions holding a live sequence's tokens."""
        used = sum(s.num_cached for s in list(self.scheduler.running))
        return used / (self.cfg.max_num_seqs * self.context)

    # ---- the engine thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopped or self._incoming or self.scheduler.running or self.scheduler.waiting):
                    self._cond.wait()
                if self._stopped:
                    return
                for seq in self._incoming:
                    self.scheduler.add(seq)
                self._incoming.clear()
            try:
                self.step()
            except Exception as exc:  # a bug or an out-of-memory must not kill the server: fail these requests
                log.exception("engine step failed")
                for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
                    self.scheduler.finish(seq)
                    seq.emit(Event("", [], finish_reason="stop", error=f"engine error: {type(exc).__name__}"))
            if self.after_step is not None:
                self.after_step()

    def step(self) -> None:
        now = time.monotonic()
        for seq in list(self.scheduler.waiting) + list(self.scheduler.running):
            if seq.cancelled:
                self._finish(seq, "stop", "cancelled", "")
            elif now > seq.deadline:
                self._finish(seq, "length", "deadline", seq.stream.flush())
        prefill, decode = self.scheduler.schedule()
        for seq in (s for s, _ in prefill if s.num_cached == 0):  # admitted this step
            if self.metrics is not None:
                self.metrics.queue_time(now - seq.arrival)
        # One forward for the step: each prefill chunk and each decoding sequence is a row, in slot order.
        work = sorted([(seq, seq.prompt_ids[seq.num_cached:seq.num_cached + n]) for seq, n in prefill] +
                      [(seq, seq.output_ids[-1:]) for seq in decode], key=lambda w: w[0].slot)
        with torch.inference_mode():
            rows = []
            if work:
                alone = self.alone(len(work))
                self._use_threads(self.step_threads(len(work)))
                t0 = time.perf_counter()
                logits = self.runner.step([(tokens, seq.slot, seq.num_cached) for seq, tokens in work])
                # Greedy rows' tokens in one reduction over the batch (the first maximum, as argmax row by row).
                # max's indices, not argmax: CPU argmax over bf16 logits takes about 4x as long (1.56 against
                # 0.36 ms for 8 x 50,304 on one core), and casting them to fp32 first copies 1.6 MB.
                greedy = any(s.params.temperature < 1e-5 for s, _ in work)
                best = logits.max(-1).indices.tolist() if greedy else None
                if alone and len(work[0][1]) == 1:  # a lone decode step (not a prompt): its time at these threads
                    self.lone.record(self.threads, time.perf_counter() - t0)
                for i, ((seq, tokens), row) in enumerate(zip(work, logits)):
                    seq.num_cached += len(tokens)
                    if seq.prefilled:  # a prompt's last chunk, or a decode: sample the next token
                        rows.append((seq, row, best[i] if best is not None else None))
            for seq, row, greedy in rows:
                try:
                    self._accept(seq, row, greedy)
                except RuntimeError as exc:  # one row's bad numbers fail that sequence, not the batch
                    log.warning("sampling failed for sequence %d: %s", seq.seq_id, exc)
                    self.scheduler.finish(seq)
                    seq.emit(Event("", [], finish_reason="stop", error=f"sampling failed: {exc}"))

    def _sample(self, seq: Sequence, logits: torch.Tensor, greedy: int | None = None) -> tuple[int, list]:
        p = seq.params
        # Below 1e-5 a temperature only overflows the scaled logits: it means greedy (as vLLM's _SAMPLING_EPS).
        temperature = p.temperature if p.temperature >= 1e-5 else 0.0
        if temperature == 0.0 and greedy is not None and p.logprobs is None:
            return greedy, []
        # sample_next compares top_p with float32 sums: a top_p under float32's range (1e-230) would
        # become 0 there and drop every token, so it is floored at 1e-6 (keeps the top token only).
        top_p = max(p.top_p, 1e-6) if p.top_p < 1 else None
        token = sample_next(logits, temperature, None, top_p, seq.generator)
        if p.logprobs is None:
            return token, []
        logp = torch.log_softmax(logits.float(), dim=-1)
        top = []
        if p.logprobs > 0:
            values, ids = torch.topk(logp, p.logprobs)
            top = [(self._piece(int(i)), float(v)) for v, i in zip(values, ids)]
        return token, [(self._piece(token), float(logp[token]), top)]

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _accept(self, seq: Sequence, logits: torch.Tensor, greedy: int | None = None) -> None:
        """Sample the next token of ``seq`` and send what it adds; finish it when it is done."""
        if seq.status is SeqStatus.FINISHED:
            return
        token, logprobs = self._sample(seq, logits, greedy)
        now = time.monotonic()
        if self.metrics is not None:
            self.metrics.token(seq, now)
        seq.first_token_time = seq.first_token_time or now
        seq.last_token_time = now
        seq.output_ids.append(token)
        if token == self.eot_id:
            return self._finish(seq, "stop", "eos", seq.stream.flush(), [token], logprobs)
        text, hit = seq.stream.push(token)
        if hit:
            return self._finish(seq, "stop", "stop", text, [token], logprobs)
        limit = ("max_tokens" if len(seq.output_ids) >= seq.params.max_tokens else
                 "context" if seq.length >= self.context else "deadline" if now > seq.deadline else None)
        if limit:
            return self._finish(seq, "length", limit, text + seq.stream.flush(), [token], logprobs)
        seq.emit(Event(text, [token], logprobs))

    def _finish(self, seq: Sequence, reason: str, detail: str, text: str, token_ids: list[int] | None = None,
                logprobs: list | None = None) -> None:
        self.scheduler.finish(seq)
        if self.metrics is not None:
            self.metrics.finished(seq, "abort" if detail == "cancelled" else reason)
        seq.emit(Event(text, token_ids or [], logprobs or [], finish_reason=reason, prompt_tokens=len(seq.prompt_ids),
                       completion_tokens=len(seq.output_ids), detail=detail))
