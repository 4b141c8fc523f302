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

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from hwlm.errors import ConfigError
from hwlm.model.transformer import KVCache, Transformer

__all__ = ["generate", "sample_next"]


def _check_args(prompt_ids: Sequence[int], max_new_tokens: int, temperature: float, top_k: int | None,
                top_p: float | None, vocab_size: int) -> None:
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
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def _forward_last(model: Transformer, idx: torch.Tensor, cache: KVCache, start_pos: int) -> torch.Tensor:
    """Logits (V,) of the last position, writing keys/values into ``cache``."""
    logits, _ = model(idx, cache=cache, start_pos=start_pos, last_only=True)
    return logits[0, -1]


def generate(model: Transformer, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             eos_id: int | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids one at a time, stopping after ``eos_id``.

    The model runs in eval mode (restored afterwards). The same ``seed`` gives the same tokens
    on the same machine; ``temperature=0`` is greedy and ignores ``seed``.
    """
    cfg = model.cfg
    _check_args(prompt_ids, max_new_tokens, temperature, top_k, top_p, cfg.vocab_size)
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
        with torch.inference_mode():  # inference tensors: ops on them skip autograd's view/version tracking
            cache = KVCache(cfg, batch_size=1, device=device, dtype=param.dtype)
            state = model.decode_state()  # once per call: the token loop then reads no module attributes
        logits = _forward_last(model, torch.tensor([history], device=device), cache, 0)
        pos = len(history)
        for i in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)
            yield token
            if token == eos_id or i == max_new_tokens - 1:
                return
            history.append(token)
            if pos == window:
                # Cache full: slide the window and prefill the kept tokens again from position 0.
                history = history[-keep:]
                logits = _forward_last(model, torch.tensor([history], device=device), cache, 0)
                pos = len(history)
            elif torch.is_autocast_enabled(device.type):  # the caller's autocast: forward's general path casts
                logits = _forward_last(model, torch.full((1, 1), token, device=device), cache, pos)
                pos += 1
            else:
                # decode_step directly: no forward checks or module calls on the per-token path.
                with torch.inference_mode():
                    logits = model.decode_step(token, cache, pos, state)
                pos += 1
    finally:
        model.train(was_training)
