"""The one door every request goes through (a plain ASGI middleware): size limit, API key, per-key
limits, audit record.

Fail closed: every path is guarded except those in ``PUBLIC`` (``/health``, and the chat page's
static HTML and JavaScript, which hold no data and ask for a key themselves), so a new route is
protected without anyone remembering to protect it. The audit record is written after the response
is sent (a stream included), from what the route left in ``scope["state"]["audit"]``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from hwlm.serve.protocol import error_body

__all__ = ["Gate", "PUBLIC"]

PUBLIC = frozenset({"/health", "/", "/static/chat.js", "/static/chat.css", "/favicon.ico"})


class _TooLarge(Exception):
    pass


async def _send_json(send: Any, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class Gate:
    def __init__(self, app: Any, state: Any) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st, start = self.state, time.monotonic()
        path = scope["path"]
        info: dict[str, Any] = {"status": 0}
        request_state = scope.setdefault("state", {})
        request_state["audit"] = audit = {}
        key_name, key_id = None, None

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
            await send(message)

        try:
            if path not in PUBLIC:
                length = dict(scope.get("headers", [])).get(b"content-length")
                if length is not None and (not length.isdigit() or int(length) > st.cfg.max_request_bytes):
                    return await _send_json(tracked_send, 413, error_body(
                        f"request body over {st.cfg.max_request_bytes} bytes", code="request_too_large"))
                record = self._authenticate(scope)
                if record is None:
                    return await _send_json(tracked_send, 401, error_body(
                        "missing or invalid API key: send 'Authorization: Bearer hwlm-...' (see `hwlm keys add`)",
                        type="authentication_error", code="invalid_api_key"), {"WWW-Authenticate": "Bearer"})
                key_name, key_id = record
                denied = st.limiter.acquire(key_id)
                if denied is not None:
                    key_id = None  # not admitted: nothing to release
                    return await _send_json(tracked_send, 429, error_body(
                        f"rate limit: {denied.reason}", type="rate_limit_error", code="rate_limit_exceeded"),
                        {"Retry-After": st.limiter.header(denied.retry_after)})
                request_state["key_name"] = key_name
            await self.app(scope, self._limited(receive, st.cfg.max_request_bytes), tracked_send)
        except _TooLarge:
            if info["status"] == 0:
                await _send_json(tracked_send, 413, error_body(
                    f"request body over {st.cfg.max_request_bytes} bytes", code="request_too_large"))
        finally:
            if key_id is not None:
                st.limiter.release(key_id, audit.get("prompt_tokens", 0) + audit.get("completion_tokens", 0))
            if st.audit is not None and path != "/health":
                fields = {"event": "request", "request_id": audit.get("request_id") or f"req-{uuid.uuid4().hex[:16]}",
                          "key": key_name, "method": scope.get("method"), "route": path,
                          "status": info["status"] or 499, "latency_ms": round((time.monotonic() - start) * 1e3, 2),
                          **{k: v for k, v in audit.items() if k != "request_id"}}
                await asyncio.to_thread(st.audit.append, fields)

    def _authenticate(self, scope: dict) -> tuple[str, str] | None:
        """(key name, key id) of a valid bearer key; ("anonymous", "-") when serving without keys."""
        if self.state.keystore is None:
            return "anonymous", "-"
        header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        record = self.state.keystore.check(token.strip())
        return (record.name, record.id) if record else None

    @staticmethod
    def _limited(receive: Any, limit: int) -> Any:
        """``receive`` that raises once a (chunked) body grows past ``limit`` bytes."""
        seen = 0

        async def wrapped() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message
        return wrapped
