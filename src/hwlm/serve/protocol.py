"""The OpenAI wire format: request models (validated by pydantic) and the JSON the server answers.

Only what the server implements is accepted: an unsupported option (``echo``, ``best_of`` > n,
penalties, tools) is a 400 naming it, never silently ignored. Unknown fields are ignored, as
OpenAI's own clients send new fields first and servers learn them later.

Response shapes follow https://platform.openai.com/docs/api-reference (completions, chat
completions, their streamed chunks and the ``{"error": {...}}`` object).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CompletionRequest", "ChatRequest", "APIError", "error_body", "usage", "completion_logprobs",
           "chat_logprobs"]


class APIError(Exception):
    """An error answered in OpenAI's format: ``status``, message, type, param, code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2 ** 63), lt=2 ** 63)
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: only 0")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: only 0")
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop takes at most 4 strings", param="stop")
        return tuple(s for s in stops if s)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0)
    echo: bool = Field(False, description="not supported: only false")
    suffix: str | None = Field(None, description="not supported")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=1)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_logprobs(items: list[tuple[str, float, list[tuple[str, float]]]], offset: int) -> dict[str, Any]:
    """Legacy completions ``logprobs``: parallel lists of tokens, their logprobs, top alternatives, offsets."""
    offsets, pos = [], offset
    for token, _, _ in items:
        offsets.append(pos)
        pos += len(token)
    return {"tokens": [t for t, _, _ in items], "token_logprobs": [lp for _, lp, _ in items],
            "top_logprobs": [dict(top) for _, _, top in items], "text_offset": offsets}


def chat_logprobs(items: list[tuple[str, float, list[tuple[str, float]]]]) -> dict[str, Any]:
    def entry(token: str, lp: float) -> dict[str, Any]:
        return {"token": token, "logprob": lp, "bytes": list(token.encode("utf-8"))}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(a, b) for a, b in top]} for t, lp, top in items]}


def now() -> int:
    return int(time.time())
