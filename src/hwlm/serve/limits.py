"""Per-key limits: requests and tokens per sliding window, and requests in flight.

    limiter = RateLimiter(window=60, max_requests=600, max_tokens=100_000, max_concurrent=8)
    wait = limiter.acquire("key-id")   # None: admitted; else seconds until a retry can succeed (429)
    ...
    limiter.release("key-id", tokens=123)

The clock is injectable (``clock=``) so a test can move time instead of sleeping. Tokens are
counted when a request ends (prompt + completion), so a burst can overshoot the token limit by the
requests already admitted; the next request then waits until the window has room again.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["RateLimiter", "Denied"]


@dataclass
class Denied:
    reason: str
    retry_after: float  # seconds


@dataclass
class _KeyState:
    requests: deque = field(default_factory=deque)  # arrival times
    tokens: deque = field(default_factory=deque)  # (time, tokens)
    token_sum: int = 0
    in_flight: int = 0


class RateLimiter:
    def __init__(self, window: float, max_requests: int, max_tokens: int, max_concurrent: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.max_requests, self.max_tokens = window, max_requests, max_tokens
        self.max_concurrent, self.clock = max_concurrent, clock
        self._keys: dict[str, _KeyState] = {}
        self._lock = threading.Lock()

    def _expire(self, st: _KeyState, now: float) -> None:
        while st.requests and st.requests[0] <= now - self.window:
            st.requests.popleft()
        while st.tokens and st.tokens[0][0] <= now - self.window:
            st.token_sum -= st.tokens.popleft()[1]

    def acquire(self, key: str) -> Denied | None:
        """Admit one request of ``key`` (counted until ``release``), or say why not and for how long."""
        with self._lock:
            now = self.clock()
            st = self._keys.setdefault(key, _KeyState())
            self._expire(st, now)
            if self.max_concurrent and st.in_flight >= self.max_concurrent:
                return Denied(f"{st.in_flight} requests in flight for this key (limit {self.max_concurrent})", 1.0)
            if self.max_requests and len(st.requests) >= self.max_requests:
                return Denied(f"more than {self.max_requests} requests in {self.window:g} s for this key",
                              st.requests[0] + self.window - now)
            if self.max_tokens and st.token_sum >= self.max_tokens:
                return Denied(f"more than {self.max_tokens} tokens in {self.window:g} s for this key",
                              st.tokens[0][0] + self.window - now)
            st.requests.append(now)
            st.in_flight += 1
            return None

    def release(self, key: str, tokens: int = 0) -> None:
        with self._lock:
            st = self._keys[key]
            st.in_flight -= 1
            if tokens:
                st.tokens.append((self.clock(), tokens))
                st.token_sum += tokens

    @staticmethod
    def header(seconds: float) -> str:
        """Retry-After takes whole seconds: round up, at least 1."""
        return str(max(1, math.ceil(seconds)))
