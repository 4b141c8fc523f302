"""The HTTP layer: FastAPI routes that only translate between OpenAI's wire format and the engine.

    app = create_app(state)      # state: a ServerState (engine, tokenizer, limits, keys, audit, metrics)

A request is validated (400 in OpenAI's format, never 422), its prompt encoded and checked against
the context (400 before any stream starts), its choices submitted to the engine (503 with
Retry-After when the queue is full), and the engine's events relayed: as one JSON answer, or as
server-sent events ending in ``data: [DONE]``. A client that goes away aborts its sequences, which
frees their KV-cache slots at the engine's next step. The engine runs in its own process
(``engine.client.EngineClient``); its events reach the handlers' queues on this event loop, and if it
dies ``/health`` and new requests answer 503. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hwlm.serve.chat import ChatTemplate, message_text
from hwlm.serve.engine import EngineClient, EngineDown, Event, QueueFull, SamplingParams, Sequence
from hwlm.serve.gate import Gate
from hwlm.serve.protocol import (APIError, ChatRequest, CompletionRequest, chat_logprobs, completion_logprobs,
                                 error_body, now, usage)

__all__ = ["ServerState", "create_app"]

_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "function-after", "literal_error"})


@dataclass
class ServerState:
    cfg: Any                      # ServeConfig
    engine: EngineClient
    tokenizer: Any
    encode: Callable[[str], list[int]]
    model_name: str
    context: int
    chat_template: ChatTemplate
    limiter: Any                  # RateLimiter
    keystore: Any = None          # KeyStore, or None with --no-auth
    audit: Any = None             # AuditLog, or None
    metrics: Any = None           # ServeMetrics


def create_app(state: ServerState) -> Any:
    app = FastAPI(title="hwlm serve", version="1", summary="OpenAI-compatible API of an hwlm run")
    app.state.hwlm = state
    _handlers(app)

    @app.get("/health")
    async def health() -> Response:
        if not state.engine.alive:
            return JSONResponse({"status": "error", "error": state.engine.error}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                            "owned_by": "hwlm", "max_model_len": state.context}]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("chat.html"))

    @app.get("/static/chat.js")
    async def script() -> Response:
        return Response(_static("chat.js"), media_type="text/javascript; charset=utf-8")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prompts = _completion_prompts(state, body.prompt)
        if body.echo or body.suffix:
            raise APIError(400, "echo and suffix are not supported by hwlm serve", param="echo")
        if body.logprobs is not None and body.logprobs > min(5, state.cfg.max_logprobs):
            raise APIError(400, f"logprobs must be at most {min(5, state.cfg.max_logprobs)}", param="logprobs")
        params = _params(state, body, body.max_tokens or 16, body.logprobs, body.stop_strings())
        return await _run(state, request, "cmpl", prompts, params, body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Response:
        messages = [{"role": m.role, "content": message_text(m.content)} for m in body.messages]
        prompt = state.chat_template.render(messages)
        ids = _encode(state, prompt, "messages")
        top = body.top_logprobs
        if top is not None and top > state.cfg.max_logprobs:
            raise APIError(400, f"top_logprobs must be at most {state.cfg.max_logprobs}", param="top_logprobs")
        if top is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        limit = body.max_completion_tokens or body.max_tokens or state.context
        stops = body.stop_strings() + state.chat_template.default_stop
        params = _params(state, body, limit, (top or 0) if body.logprobs else None, stops)
        audit = request.state.audit
        if state.cfg.audit_prompts:
            audit["prompt"] = messages
        return await _run(state, request, "chatcmpl", [ids], params, body, chat=True)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # The schema tells the truth about this server: one model name is valid.
        schema = base_openapi()
        for name in ("CompletionRequest", "ChatRequest"):
            schema["components"]["schemas"][name]["properties"]["model"]["enum"] = [state.model_name]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return Gate(app, state)


def _static(name: str) -> str:
    return resources.files("hwlm.serve").joinpath("static", name).read_text(encoding="utf-8")


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
                                           .rstrip(": ")), 400)
        loc = [p for p in first.get("loc", ())[1:]]
        # Keep the field path, drop pydantic's union-branch names ("prompt.str", "prompt.list[int]").
        where = ".".join(str(p) for p in loc if isinstance(p, int) or (p.isidentifier() and p not in _TYPE_NAMES)) or None
        message = f"{where or 'body'}: {first.get('msg', 'invalid request')}" if first else "invalid request"
        return JSONResponse(error_body(message, param=where), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), exc.status_code, headers=getattr(exc, "headers", None))


def _encode(state: ServerState, text: str, param: str) -> list[int]:
    ids = state.encode(text)
    if not ids:
        raise APIError(400, f"{param} is empty: give at least one token of text", param=param)
    _check_ids(state, ids, param)
    return ids


def _check_ids(state: ServerState, ids: list[int], param: str) -> None:
    if len(ids) > state.context:
        raise APIError(400, f"this model's context is {state.context} tokens, the prompt has {len(ids)}: "
                            "shorten it", param=param, code="context_length_exceeded")
    vocab = state.engine.vocab_size
    if any(not 0 <= t < vocab for t in ids):
        raise APIError(400, f"token ids must be in [0, {vocab})", param=param)


def _completion_prompts(state: ServerState, prompt: Any) -> list[list[int]]:
    if isinstance(prompt, str):
        return [_encode(state, prompt, "prompt")]
    if not prompt:
        raise APIError(400, "prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        _check_ids(state, prompt, "prompt")
        return [list(prompt)]
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append(_encode(state, p, "prompt"))
        else:
            if not p:
                raise APIError(400, "prompt holds an empty token list", param="prompt")
            _check_ids(state, p, "prompt")
            out.append(list(p))
    return out


def _params(state: ServerState, body: Any, max_tokens: int, logprobs: int | None,
            stops: tuple[str, ...]) -> SamplingParams:
    if body.n > state.cfg.max_n:
        raise APIError(400, f"n must be at most {state.cfg.max_n}", param="n")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")
    if body.model != state.model_name:
        raise APIError(404, f"model {body.model!r} does not exist; this server has {state.model_name!r}",
                       type="not_found_error", param="model", code="model_not_found")
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                          stop=stops, logprobs=logprobs)


async def _run(state: ServerState, request: Request, prefix: str, prompts: list[list[int]], params: SamplingParams,
               body: Any, chat: bool) -> Response:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    request_id = f"{prefix}-{uuid.uuid4().hex[:24]}"
    audit = request.state.audit
    audit.update(request_id=request_id, prompt_tokens=sum(len(p) for p in prompts) * body.n, completion_tokens=0)
    if state.cfg.audit_prompts and not chat:
        audit["prompt"] = body.prompt
    deadline = loop.time() + state.cfg.request_timeout  # loop.time() is time.monotonic()
    decode = lambda ids: state.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    seqs = []
    for p in prompts:
        for j in range(body.n):
            i = len(seqs)
            p_i = params if params.seed is None else SamplingParams(**{**params.__dict__, "seed": params.seed + j})
            emit = (lambda i: lambda ev: queue.put_nowait((i, ev)))(i)  # called on this loop by the client
            seqs.append(Sequence(p, p_i, emit, decode, deadline=deadline))
    try:
        state.engine.submit(seqs)
    except QueueFull:
        raise APIError(503, "the server is at capacity: retry shortly", type="server_overloaded",
                       code="server_busy", headers={"Retry-After": "1"}) from None
    except EngineDown as exc:
        raise APIError(503, f"the engine is not running ({exc}): the server must be restarted", type="server_error",
                       code="engine_down") from None
    events = _events(state, request, queue, seqs)
    first = await anext(events, None)  # the first token (or error) arrives before any byte is sent
    if first is not None and first[1].error:
        await events.aclose()
        if not state.engine.alive:
            raise APIError(503, f"the engine is not running ({first[1].error}): the server must be restarted",
                           type="server_error", code="engine_down")
        raise APIError(500, first[1].error, type="server_error")
    meta = {"id": request_id, "created": now(), "model": state.model_name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        gen = _sse(state, events, first, seqs, meta, chat, include_usage, audit)
        return StreamingResponse(gen, media_type="text/event-stream", headers={"X-Request-Id": request_id})
    return await _collect(events, first, seqs, meta, chat, audit)


async def _events(state: ServerState, request: Request, queue: asyncio.Queue, seqs: list[Sequence]
                  ) -> AsyncIterator[tuple[int, Event]]:
    """The engine's events for these sequences until each has finished; aborts them if the client leaves.

    Events that queued up while the handler was busy are merged per choice (one chunk of several
    tokens instead of several chunks): under load the event loop then writes fewer, larger chunks.
    """
    live = len(seqs)
    try:
        while live:
            items = []
            if queue.empty():
                try:
                    items.append(await asyncio.wait_for(queue.get(), timeout=0.25))
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
            while not queue.empty():
                items.append(queue.get_nowait())
            pending: dict[int, list[Event]] = {}
            for i, ev in items:
                pending.setdefault(i, []).append(ev)
            for i, evs in pending.items():
                ev = evs[0] if len(evs) == 1 else _merge(evs)
                if ev.finish_reason is not None:
                    live -= 1
                yield i, ev
    finally:
        if live:
            state.engine.abort(seqs)


def _merge(evs: list[Event]) -> Event:
    last = evs[-1]
    return Event("".join(e.text for e in evs), [t for e in evs for t in e.token_ids],
                 [lp for e in evs for lp in e.logprobs], last.finish_reason, last.prompt_tokens,
                 last.completion_tokens, next((e.error for e in evs if e.error), None), last.detail)


def _note(audit: dict, ev: Event, reasons: list) -> None:
    audit["completion_tokens"] = audit.get("completion_tokens", 0) + len(ev.token_ids)
    if ev.finish_reason is not None:
        reasons.append(ev.detail or ev.finish_reason)
        audit["finish_reason"] = reasons[0] if len(set(reasons)) == 1 else reasons


async def _collect(events: AsyncIterator, first: Any, seqs: list[Sequence], meta: dict, chat: bool,
                   audit: dict) -> JSONResponse:
    text = [""] * len(seqs)
    lps: list[list] = [[] for _ in seqs]
    reason: list[str | None] = [None] * len(seqs)
    prompt = completion = 0
    reasons: list[str] = []
    item = first
    while item is not None:
        i, ev = item
        text[i] += ev.text
        lps[i] += ev.logprobs
        _note(audit, ev, reasons)
        if ev.finish_reason is not None:
            reason[i] = ev.finish_reason
            prompt += ev.prompt_tokens
            completion += ev.completion_tokens
        item = await anext(events, None)
    choices = []
    for i, seq in enumerate(seqs):
        want = seq.params.logprobs is not None
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text[i]},
                            "logprobs": chat_logprobs(lps[i]) if want else None, "finish_reason": reason[i]})
        else:
            choices.append({"index": i, "text": text[i], "logprobs": completion_logprobs(lps[i], 0) if want else None,
                            "finish_reason": reason[i]})
    obj = "chat.completion" if chat else "text_completion"
    return JSONResponse({**meta, "object": obj, "choices": choices, "usage": usage(prompt, completion)},
                        headers={"X-Request-Id": meta["id"]})


async def _sse(state: ServerState, events: AsyncIterator, first: Any, seqs: list[Sequence], meta: dict, chat: bool,
               include_usage: bool, audit: dict) -> AsyncIterator[bytes]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    extra = {"usage": None} if include_usage else {}
    offsets = [0] * len(seqs)
    prompt = completion = 0
    reasons: list[str] = []

    def chunk(choices: list[dict], **more: Any) -> bytes:
        return b"data: " + json.dumps({**meta, "object": obj, "choices": choices, **extra, **more}).encode() + b"\n\n"

    def choice(i: int, text: str, lp: list, finish: str | None) -> dict:
        want = seqs[i].params.logprobs is not None and lp
        if chat:
            return {"index": i, "delta": {"content": text} if text else {},
                    "logprobs": chat_logprobs(lp) if want else None, "finish_reason": finish}
        out = {"index": i, "text": text, "logprobs": completion_logprobs(lp, offsets[i]) if want else None,
               "finish_reason": finish}
        offsets[i] += len(text)
        return out

    try:
        if chat:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(len(seqs))])
        item = first
        while item is not None:
            i, ev = item
            _note(audit, ev, reasons)
            if ev.error:
                yield b"data: " + json.dumps(error_body(ev.error, "server_error")).encode() + b"\n\n"
                return
            if ev.text or ev.logprobs:
                yield chunk([choice(i, ev.text, ev.logprobs, None if chat else ev.finish_reason)])
            if ev.finish_reason is not None:
                prompt += ev.prompt_tokens
                completion += ev.completion_tokens
                if chat or not (ev.text or ev.logprobs):
                    yield chunk([choice(i, "", [], ev.finish_reason)])
            item = await anext(events, None)
        if include_usage:
            yield b"data: " + json.dumps({**meta, "object": obj, "choices": [],
                                          "usage": usage(prompt, completion)}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()
