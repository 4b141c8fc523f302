"""Serving: ``hwlm serve``, an OpenAI-compatible HTTP server with continuous batching.

Laid out as the data flows (after nano-vllm), no HTTP inside the engine:

    engine/      sequence, scheduler, model_runner (slot KV cache, batched decode), llm_engine (the thread)
    protocol.py  OpenAI request models and response shapes
    api.py       FastAPI routes: translate requests into engine sequences and events into JSON / SSE
    gate.py      the ASGI door: size limit, API key (fail closed), per-key limits, audit record
    keys.py      API keys (salted SHA-256, looked up by id)      limits.py  per-key windows
    audit.py     HMAC-chained audit log and its verifier        metrics.py Prometheus metrics (hwlm:*)
    chat.py      chat templates                                 static/    the chat page
    server.py    serve(cfg): load, bind, run uvicorn

    from hwlm.serve import ServeConfig, serve
    serve(ServeConfig(run=Path("runs/train"), api_keys=Path("hwlm-keys.json")))
"""

from hwlm.serve.config import ServeConfig

__all__ = ["ServeConfig", "serve", "build_state"]


def __getattr__(name: str):  # torch and FastAPI load only when a server is really built
    if name in ("serve", "build_state"):
        from hwlm.serve import server

        return getattr(server, name)
    raise AttributeError(name)
