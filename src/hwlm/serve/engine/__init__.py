"""The continuous-batching engine, laid out as the data flows (after nano-vllm): ``sequence`` (one
request's state), ``scheduler`` (waiting and running queues, slots, prefill budget),
``model_runner`` (slot KV cache, one packed forward per step), ``onnx_runner`` (the same over
onnxruntime), ``llm_engine`` (the thread that steps), ``worker`` (that thread in its own process)
and ``client`` (the HTTP process's handle on it). No HTTP in here.

``Sequence``, ``SamplingParams``, ``Event``, ``QueueFull`` and ``EngineClient`` are torch-free: the
HTTP process imports them without torch; ``LLMEngine`` loads torch when it is first named.
"""

from hwlm.serve.engine.scheduler import QueueFull
from hwlm.serve.engine.sequence import Event, SamplingParams, Sequence

__all__ = ["LLMEngine", "EngineConfig", "EngineClient", "EngineDown", "QueueFull", "Event", "SamplingParams",
           "Sequence"]


def __getattr__(name: str):
    if name in ("LLMEngine", "EngineConfig"):
        from hwlm.serve.engine import llm_engine

        return getattr(llm_engine, name)
    if name in ("EngineClient", "EngineDown"):
        from hwlm.serve.engine import client

        return getattr(client, name)
    raise AttributeError(name)
