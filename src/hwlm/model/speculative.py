"""Speculative decoding: a small draft model proposes ``k`` tokens, the target checks them in one forward.

At batch 1 a decoding step reads every weight once whatever the number of tokens it scores, so the
target scoring ``k + 1`` positions costs about one step; when the draft guesses well, each target
pass yields several tokens (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding"; Chen et al. 2023).

One round, with the sequence ``s`` so far (both KV caches hold all of ``s`` but its last token):

1. the draft feeds ``s[-1]`` and then its own guesses, one token at a time: guesses ``d1..dk``
   with distributions ``q1..qk``;
2. the target runs once over ``[s[-1], d1, ..., dk]`` (a chunked prefill into its cache):
   distributions ``p1..p(k+1)``;
3. greedy (temperature 0): keep guesses while ``di == argmax pi``; at the first miss emit
   ``argmax pi`` instead; if all ``k`` pass, emit ``argmax p(k+1)`` as a bonus. That is exactly
   the token plain greedy decoding emits at each position, so the output is the same (tested);
   sampling: keep ``di`` with probability ``min(1, pi(di) / qi(di))``, else draw from
   ``max(0, pi - qi)`` renormalized and stop: the emitted tokens are distributed as samples
   of the target alone (the accept/reject rule of Leviathan et al., Theorem 1).

Stale cache entries past the accepted tokens are simply overwritten next round: attention reads only
positions below the current one. Target and draft must share the tokenizer and vocabulary
(:func:`check_draft`). A draft with a shorter context than the target proposes from the most recent
tokens it can hold (its window slides alone: the target's output does not change). Past the target's
own context the window slides as in ``generate`` but at round boundaries, so output that long may
differ from plain decoding (which slides at another token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from hwlm.errors import ConfigError
from hwlm.model.generation import check_args, filtered_probs
from hwlm.model.transformer import KVCache, Transformer

__all__ = ["SpecStats", "speculative_generate", "check_draft"]


@dataclass
class SpecStats:
    """What one speculative call did: guesses proposed and accepted, target and draft passes."""

    proposed: int = 0
    accepted: int = 0
    target_passes: int = 0
    draft_steps: int = 0
    emitted: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens (0 when none was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_pass(self) -> float:
        return self.emitted / self.target_passes if self.target_passes else 0.0


def check_draft(target: Transformer, draft: Transformer, target_vocab: dict[str, int] | None = None,
                draft_vocab: dict[str, int] | None = None, draft_name: str = "the draft") -> None:
    """Raise ConfigError unless ``draft`` can propose tokens for ``target``: the same vocabulary and tokenizer."""
    tv, dv = target.cfg.vocab_size, draft.cfg.vocab_size
    if tv != dv:
        raise ConfigError(f"{draft_name} has a vocabulary of {dv} tokens, the target {tv}: a draft must use the "
                          "target's tokenizer (train it on the same prepared data)")
    if target_vocab is not None and draft_vocab is not None and target_vocab != draft_vocab:
        raise ConfigError(f"{draft_name} was trained with another tokenizer than the target (same size, other "
                          "tokens): train the draft on the target's prepared data")


class _Side:
    """One model's KV cache and flat decoding state for a speculative call."""

    def __init__(self, model: Transformer, device: torch.device) -> None:
        p = next(model.parameters())
        self.model, self.device = model, device
        self.cache = KVCache(model.cfg, 1, device=device, dtype=p.dtype)
        self.state = model.decode_state()

    def prefill(self, ids: list[int]) -> None:
        if ids:
            self.model(torch.tensor([ids], device=self.device), cache=self.cache, start_pos=0, last_only=True)

    def step(self, token: int, pos: int) -> torch.Tensor:
        return self.model.decode_step(token, self.cache, pos, self.state)  # (V,)

    def score(self, ids: list[int], pos: int) -> torch.Tensor:
        logits, _ = self.model(torch.tensor([ids], device=self.device), cache=self.cache, start_pos=pos)
        return logits[0]  # (T, V)


def _accept(p: torch.Tensor, q: torch.Tensor | None, guesses: list[int],
            generator: torch.Generator | None) -> tuple[int, int]:
    """(accepted guesses, the next token) from the target's ``p`` (k+1, V) and the draft's ``q`` (k, V).

    ``q`` None is greedy: ``p`` then holds logits and only their argmax counts."""
    greedy = q is None
    for i, d in enumerate(guesses):
        if q is None:
            best = int(p[i].argmax())
            if best != d:
                return i, best
            continue
        u = torch.rand((), generator=generator, device=p.device)
        if u * q[i, d] < p[i, d]:  # accept with probability min(1, p(d) / q(d)); q(d) > 0: d was drawn from q
            continue
        residual = (p[i] - q[i]).clamp_(min=0)
        if float(residual.sum()) <= 0:  # p == q up to round-off: any draw from p is right
            residual = p[i]
        return i, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    last = p[len(guesses)]
    return len(guesses), int(last.argmax()) if greedy else int(torch.multinomial(last, 1, generator=generator))


@torch.inference_mode()
def speculative_generate(target: Transformer, draft: Transformer, prompt_ids: Sequence[int], max_new_tokens: int,
                         k: int = 4, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                         seed: int | None = None, eos_id: int | None = None,
                         stats: SpecStats | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids like ``generate(target, ...)``, ``draft`` proposing ``k`` at a time.

    Greedy output equals ``generate(target, prompt, n, temperature=0)`` token for token within the
    context window; sampling draws from the target's (temperature, top-k, top-p filtered)
    distribution. ``stats``, when given, is filled in as tokens are produced.
    """
    check_args(prompt_ids, max_new_tokens, temperature, top_k, top_p, target.cfg.vocab_size)
    check_draft(target, draft)
    if k < 1:
        raise ConfigError(f"the draft must propose at least 1 token per round (k = {k})")
    stats = stats if stats is not None else SpecStats()
    device = next(target.parameters()).device
    greedy = temperature == 0
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None and not greedy else None
    window, draft_window = target.cfg.block_size, draft.cfg.block_size
    if min(window, draft_window) < k + 2:
        raise ConfigError(f"a context of {min(window, draft_window)} positions is too short for k = {k} guesses: "
                          "lower --draft-k")
    seq = [int(t) for t in prompt_ids][-window:]
    d0 = max(0, len(seq) - draft_window // 2)  # the draft sees seq[d0:], at positions from 0
    modes = [(m, m.training) for m in (target, draft)]
    for m, _ in modes:
        m.eval()
    try:
        tgt, drf = _Side(target, device), _Side(draft, device)
        tgt.prefill(seq[:-1])
        drf.prefill(seq[d0:-1])
        emitted = 0
        while emitted < max_new_tokens:
            if len(seq) + k > window:  # the round would write past the target's cache: slide both
                seq = seq[-max(1, window // 2):]
                d0 = max(0, len(seq) - draft_window // 2)
                tgt.prefill(seq[:-1])
                drf.prefill(seq[d0:-1])
            elif len(seq) - d0 + k > draft_window:
                # Only the draft's (shorter) context is full: it proposes from the recent tokens alone,
                # which changes what it guesses, never what the target emits.
                d0 = len(seq) - max(1, draft_window // 2)
                drf.prefill(seq[d0:-1])
            n = len(seq)
            guesses, q = [], []
            token = seq[-1]
            for i in range(k):
                logits = drf.step(token, n - 1 + i - d0)
                qi = filtered_probs(logits, temperature, top_k, top_p) if not greedy else None
                token = int(logits.argmax()) if greedy else int(torch.multinomial(qi, 1, generator=generator))
                guesses.append(token)
                q.append(qi)
            p_logits = tgt.score([seq[-1], *guesses], n - 1)  # (k + 1, V)
            p = p_logits if greedy else torch.stack([filtered_probs(row, temperature, top_k, top_p)
                                                     for row in p_logits])
            accepted, nxt = _accept(p, None if greedy else torch.stack(q), guesses, generator)
            stats.proposed += k
            stats.accepted += accepted
            stats.target_passes += 1
            stats.draft_steps += k
            if accepted == k:  # the draft never fed its last guess: its cache needs that position too
                drf.step(guesses[-1], n - 1 + k - d0)
                stats.draft_steps += 1
            for token in (*guesses[:accepted], nxt):
                seq.append(token)
                emitted += 1
                stats.emitted += 1
                yield token
                if token == eos_id or emitted == max_new_tokens:
                    return
    finally:
        for m, was in modes:
            m.train(was)
