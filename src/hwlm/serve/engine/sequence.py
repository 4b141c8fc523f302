"""One request's state inside the engine: ``Sequence`` (tokens, sampling, slot) and its text stream.

A sequence moves WAITING -> RUNNING (holds a KV-cache slot; prefilled in chunks, then decoded one
token per step) -> FINISHED. The engine thread alone mutates it; the HTTP side only reads the
events it is sent (``Event``) and may set ``cancelled`` (a disconnect), which the engine sees at its
next step.

``TextStream`` turns token ids into text the way ``hwlm generate`` prints it (whole UTF-8
characters only, see ``hwlm.train.load.decode_stream``) and applies stop strings: text that could
still be the start of a stop string is held back, so a stop string never shows part-way in a stream,
and the stop string itself is never sent.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["SamplingParams", "Sequence", "SeqStatus", "Event", "TextStream"]

# A byte-level token run this long that still ends in U+FFFD is invalid bytes, not a split character.
_MAX_PENDING_TOKENS = 8
_ids = itertools.count()


@dataclass(frozen=True)
class SamplingParams:
    """How one choice is generated (validated by the HTTP layer before it gets here)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob and the top k


@dataclass
class Event:
    """What the engine sends for one step of one sequence: new text, and at the end a finish reason."""

    text: str
    token_ids: list[int]
    logprobs: list[tuple[str, float, list[tuple[str, float]]]] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" once, on the last event
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # the engine failed this sequence (the HTTP layer reports it)
    detail: str | None = None  # why it finished, for the audit log: eos, stop, max_tokens, context, deadline


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class TextStream:
    """Incremental detokenization plus stop strings for one sequence."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...]) -> None:
        self.decode, self.stop = decode, tuple(s for s in stop if s)
        self.pending: list[int] = []
        self.held = ""  # decoded text not yet sent: it may be the start of a stop string

    def push(self, token: int) -> tuple[str, bool]:
        """Text that is safe to send after ``token``, and whether a stop string was hit."""
        self.pending.append(token)
        piece = self.decode(self.pending)
        if piece.endswith("\ufffd") and len(self.pending) < _MAX_PENDING_TOKENS:
            return "", False
        self.pending = []
        return self._release(self.held + piece)

    def flush(self) -> str:
        """Everything held back, at the end of the sequence (no stop string can complete any more)."""
        text = self.held + (self.decode(self.pending) if self.pending else "")
        self.pending, self.held = [], ""
        return text

    def _release(self, text: str) -> tuple[str, bool]:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        keep = 0  # the longest tail of text that is a proper prefix of some stop string
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:n]):
                    keep = n
                    break
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False


@dataclass(eq=False)
class Sequence:
    """One choice of one request. ``emit`` delivers events to the waiting HTTP handler (thread-safe)."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    decode: Callable[[list[int]], str]
    deadline: float = float("inf")  # time.monotonic() after which it finishes with "length"
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: SeqStatus = SeqStatus.WAITING
    slot: int = -1
    num_cached: int = 0  # positions of this sequence already in its KV-cache slot
    output_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    generator: Any = None  # torch.Generator for seeded sampling, made by the engine
    arrival: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    last_token_time: float | None = None
    stream: TextStream | None = None

    def __post_init__(self) -> None:
        self.stream = TextStream(self.decode, self.params.stop)

    @property
    def length(self) -> int:
        """Tokens of the sequence so far (prompt plus output)."""
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def prefilled(self) -> bool:
        return self.num_cached >= len(self.prompt_ids)

    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids
