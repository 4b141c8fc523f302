"""Prometheus metrics of the server, named as vLLM's (``vllm:*``) under an ``hwlm:`` prefix.

    hwlm:num_requests_running / hwlm:num_requests_waiting   gauges, read from the engine at scrape time
    hwlm:kv_cache_usage_perc                                 fraction of slot-cache positions in use
    hwlm:engine_threads                                      the engine's torch threads in its last step
    hwlm:prompt_tokens_total / hwlm:generation_tokens_total  counters
    hwlm:request_success_total{finished_reason}              counter
    hwlm:time_to_first_token_seconds, hwlm:inter_token_latency_seconds,
    hwlm:e2e_request_latency_seconds, hwlm:request_queue_time_seconds   histograms

Each app gets its own registry (no global state), exposed at ``/metrics`` in Prometheus text format.
The engine runs in its own process: there a :class:`MetricsRecorder` takes the engine's hooks and
turns them into plain observations, sent with each step's events, which :meth:`ServeMetrics.apply`
adds to the HTTP process's registry (the gauges read the engine's last reported counts).
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["ServeMetrics", "MetricsRecorder"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)


class ServeMetrics:
    def __init__(self, model_name: str, counts: Callable[[], tuple[int, int]], kv_usage: Callable[[], float],
                 threads: Callable[[], int] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        r = self.registry

        def gauge(name: str, doc: str, fn: Callable[[], float]) -> None:
            g = Gauge(name, doc, ["model_name"], registry=r)
            g.labels(**labels).set_function(fn)

        gauge("hwlm:num_requests_running", "Sequences in the running batch (holding a KV-cache slot).",
              lambda: counts()[0])
        gauge("hwlm:num_requests_waiting", "Sequences waiting for a slot.", lambda: counts()[1])
        gauge("hwlm:kv_cache_usage_perc", "Fraction of KV-cache positions in use (1 = full).", kv_usage)
        if threads is not None:
            gauge("hwlm:engine_threads", "The engine's torch threads in its last step (--lone-threads for a lone row).",
                  threads)
        self.prompt_tokens = Counter("hwlm:prompt_tokens", "Prompt tokens prefilled.", ["model_name"],
                                     registry=r).labels(**labels)
        self.generation_tokens = Counter("hwlm:generation_tokens", "Tokens generated.", ["model_name"],
                                         registry=r).labels(**labels)
        self.success = Counter("hwlm:request_success", "Sequences finished, by reason.",
                               ["model_name", "finished_reason"], registry=r)
        self.ttft = Histogram("hwlm:time_to_first_token_seconds", "Arrival to first token.", ["model_name"],
                              buckets=_LATENCY_BUCKETS, registry=r).labels(**labels)
        self.itl = Histogram("hwlm:inter_token_latency_seconds", "Time between two tokens of a sequence.",
                             ["model_name"], buckets=_LATENCY_BUCKETS, registry=r).labels(**labels)
        self.e2e = Histogram("hwlm:e2e_request_latency_seconds", "Arrival to last token.", ["model_name"],
                             buckets=_LATENCY_BUCKETS, registry=r).labels(**labels)
        self.queue = Histogram("hwlm:request_queue_time_seconds", "Arrival to getting a slot.", ["model_name"],
                               buckets=_LATENCY_BUCKETS, registry=r).labels(**labels)
        self.labels = labels

    def apply(self, ops: list[tuple]) -> None:
        """Add a :class:`MetricsRecorder`'s observations (from the engine process)."""
        for op in ops:
            kind = op[0]
            if kind == "queue":
                self.queue.observe(op[1])
            elif kind == "first":
                self.ttft.observe(op[1])
                self.prompt_tokens.inc(op[2])
                self.generation_tokens.inc()
            elif kind == "next":
                if op[1] is not None:
                    self.itl.observe(op[1])
                self.generation_tokens.inc()
            elif kind == "finished":
                self.success.labels(finished_reason=op[1], **self.labels).inc()
                if op[2] is not None:
                    self.e2e.observe(op[2])

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsRecorder:
    """The engine's metric hooks as plain observations, collected between two :meth:`take` calls."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []

    def queue_time(self, seconds: float) -> None:
        self.ops.append(("queue", seconds))

    def token(self, seq: Any, now: float) -> None:
        if seq.first_token_time is None:
            self.ops.append(("first", now - seq.arrival, len(seq.prompt_ids)))
        else:
            gap = now - seq.last_token_time if seq.last_token_time is not None else None
            self.ops.append(("next", gap))

    def finished(self, seq: Any, reason: str) -> None:
        e2e = seq.last_token_time - seq.arrival if seq.last_token_time is not None else None
        self.ops.append(("finished", reason, e2e))

    def take(self) -> list[tuple]:
        ops, self.ops = self.ops, []
        return ops
