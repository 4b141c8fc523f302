"""Token-by-token generation with a preallocated KV cache.

``generate`` prefills the cache with the prompt in one forward pass, then feeds one token
per step, so each new token costs one pass over the weights and no recomputation. The steps call
``Transformer.decode_step`` directly (the flat batch-1 path, same numbers as ``forward``) with
its per-layer state built once per call: at batch 1 the per-op overhead is most of a step.

Context longer than ``block_size``: positions beyond the trained range do not exist (learned
positions) or were never trained (rotary), so the window slides. A prompt longer than
``block_size`` keeps its last ``block_size`` tokens. When the cache is full, the last
``block_size // 2`` tokens are kept and prefilled again from position 0, and decoding goes
on with the cache: one re-prefill per ``block_size // 2`` new tokens instead of a full
recomputation per token (what nanoGPT's crop-and-recompute costs).

    >>> ids = list(generate(model, [1, 2, 3], max_new_tokens=5, temperature=0))  # greedy
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F

from hwlm.errors import ConfigError
from hwlm.model.transformer import KVCache, Transformer

__all__ = ["generate", "sample_next", "filtered_probs", "decode_loop", "Steps", "check_args"]


def check_args(prompt_ids: Sequence[int], max_new_tokens: int, temperature: float, top_k: int | None,
                top_p: float | None, vocab_size: int) -> None:
    """Raise ConfigError naming the first bad generation argument (shared by every decoding backend)."""
    if len(prompt_ids) == 0:
        raise ConfigError("the prompt is empty: give at least one token (e.g. the end-of-text token)")
    bad = [t for t in prompt_ids if not 0 <= int(t) < vocab_size]
    if bad:
        raise ConfigError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab_size}): "
                          f"use the tokenizer the model was trained with")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1 or unset, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1] or unset, got {top_p}")


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> int:
    """One token id from ``logits`` (V,): greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0:
        return int(logits.argmax())
    return int(torch.multinomial(filtered_probs(logits, temperature, top_k, top_p), 1, generator=generator))


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """The distribution (V,) that ``sample_next`` draws from at ``temperature`` > 0, after top-k / top-p."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens
        # whose probability reaches top_p; the most likely token is always kept.
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop[0] = False  # even when top_p rounds to 0 in float32 (e.g. 1e-50): the top token is kept
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return F.softmax(logits, dim=-1)


@torch.inference_mode()
def _forward_last(model: Transformer, idx: torch.Tensor, cache: KVCache, start_pos: int) -> torch.Tensor:
    """Logits (V,) of the last position, writing keys/values into ``cache``."""
    logits, _ = model(idx, cache=cache, start_pos=start_pos, last_only=True)
    return logits[0, -1]


class _Steps:
    """How one ``generate`` call runs the model: ``prefill(ids) -> logits`` and ``step(token, pos) -> logits``.

    Three ways, the same numbers to round-off: the eager flat ``decode_step`` (default), ``forward``'s
    general path under the caller's autocast (which casts), and the fixed-shape ``StaticDecoder``
    step (``compile=True``: torch.compile, CUDA graphs on CUDA).
    """

    def __init__(self, model: Transformer, device: torch.device, dtype: torch.dtype, needed: int,
                 compile: bool) -> None:
        self.model, self.device = model, device
        self.static = None
        if compile:
            from hwlm.model.decoding import StaticDecoder, cache_length

            self.static = StaticDecoder(model, 1, cache_length(needed, model.cfg.block_size), compile=True,
                                        pooled=True)
            self.max_len = self.static.max_len
            return
        self.max_len = model.cfg.block_size
        if device.type == "cpu":  # a step streams every weight: 2 MiB pages (hwlm.model.decoding.huge_pages)
            from hwlm.model.decoding import huge_pages

            huge_pages(model.parameters())
        with torch.inference_mode():  # inference tensors: ops on them skip autograd's view/version tracking
            self.cache = KVCache(model.cfg, batch_size=1, device=device, dtype=dtype)
            self.state = model.decode_state()  # once per call: the token loop then reads no module attributes

    def close(self) -> None:
        if self.static is not None:
            self.static.close()

    def prefill(self, ids: list[int]) -> torch.Tensor:
        idx = torch.tensor([ids], device=self.device)
        if self.static is not None:
            return self.static.prefill(idx)[0]
        return _forward_last(self.model, idx, self.cache, 0)

    def step(self, token: int, pos: int) -> torch.Tensor:
        if self.static is not None:
            t = torch.tensor([token, pos], device=self.device)
            return self.static.step(t[:1], t[1:])[0]
        if torch.is_autocast_enabled(self.device.type):  # the caller's autocast: forward's general path casts
            return _forward_last(self.model, torch.full((1, 1), token, device=self.device), self.cache, pos)
        with torch.inference_mode():  # decode_step directly: no forward checks or module calls per token
            return self.model.decode_step(token, self.cache, pos, self.state)


def generate(model: Transformer, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             eos_id: int | None = None, compile: bool = False) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids one at a time, stopping after ``eos_id``.

    The model runs in eval mode (restored afterwards). The same ``seed`` gives the same tokens
    on the same machine; ``temperature=0`` is greedy and ignores ``seed``. ``compile=True`` decodes
    with the fixed-shape step of ``hwlm.model.decoding`` under ``torch.compile`` (CUDA graphs on
    CUDA); the first call compiles, which takes seconds on a CPU.
    """
    cfg = model.cfg
    check_args(prompt_ids, max_new_tokens, temperature, top_k, top_p, cfg.vocab_size)
    param = next(model.parameters())
    device = param.device
    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    window, keep = cfg.block_size, max(1, cfg.block_size // 2)
    history = [int(t) for t in prompt_ids][-window:]
    was_training = model.training
    model.eval()
    try:
        if max_new_tokens == 0:
            return
        steps = _Steps(model, device, param.dtype, len(history) + max_new_tokens, compile)
        try:
            if (steps.static is not None and device.type == "cuda" and temperature == 0
                    and len(history) + max_new_tokens <= steps.max_len):
                # Greedy CUDA graphs: the next step is queued before a token is read back (overlap).
                from hwlm.model.decoding import greedy_ahead

                yield from greedy_ahead(steps.static, history, max_new_tokens, eos_id)
                return
            yield from decode_loop(steps, history, max_new_tokens, keep,
                                   lambda logits: sample_next(logits, temperature, top_k, top_p, generator), eos_id)
        finally:
            steps.close()  # a compiled call's cache goes back to the model's pool for the next call
    finally:
        model.train(was_training)


class Steps(Protocol):
    """A way to run a model token by token: what :func:`decode_loop` drives (torch, ONNX Runtime...)."""

    max_len: int  # positions the cache holds; at max_len the window slides

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Logits (V,) after ``ids`` from position 0 (the cache restarts)."""

    def step(self, token: int, pos: int) -> torch.Tensor:
        """Logits (V,) after ``token`` at position ``pos``."""


def decode_loop(steps: Steps, history: list[int], max_new_tokens: int, keep: int,
                sample: Callable[[torch.Tensor], int], eos_id: int | None = None) -> Iterator[int]:
    """Prefill ``history``, then sample and feed one token at a time; slide the window when the cache is full."""
    logits = steps.prefill(history)
    pos = len(history)
    for i in range(max_new_tokens):
        token = sample(logits)
        yield token
        if token == eos_id or i == max_new_tokens - 1:
            return
        history.append(token)
        if pos == steps.max_len:
            # Cache full: slide the window and prefill the kept tokens again from position 0.
            # (A static cache is sized to the whole request, so it fills only at block_size.)
            history = history[-keep:]
            logits = steps.prefill(history)
            pos = len(history)
        else:
            logits = steps.step(token, pos)
            pos += 1
