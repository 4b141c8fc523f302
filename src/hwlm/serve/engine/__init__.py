"""The continuous-batching engine, laid out as the data flows (after nano-vllm): ``sequence`` (one
request's state), ``scheduler`` (waiting and running queues, slots, prefill budget),
``model_runner`` (slot KV cache, prefill and batched decode), ``llm_engine`` (the thread that steps).
No HTTP in here."""

from hwlm.serve.engine.llm_engine import EngineConfig, LLMEngine, QueueFull
from hwlm.serve.engine.sequence import Event, SamplingParams, Sequence

__all__ = ["LLMEngine", "EngineConfig", "QueueFull", "Event", "SamplingParams", "Sequence"]
