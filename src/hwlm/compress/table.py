"""The trade-off table: what a compression method buys (size, memory, speed, energy) and costs (quality).

One row per model, each measured here and now, never assumed:

* ``ppl`` on validation windows of the run's data and its change against the original, and the
  mean KL(original || compressed) per token on the same windows;
* ``size_mb``: ``model.safetensors`` on disk; ``memory_mb``: bytes of the model's tensors (and of their
  copies packed for oneDNN, :mod:`hwlm.model.packing`: an fp32 model on a CPU runs packed, as
  ``hwlm generate`` runs it) plus a batch-1 KV cache of the full context (computed from the tensors,
  not a process-wide RSS, which would mix every row of the table);
* decode tokens/s at each batch size (prompt of 16, ``steps`` greedy-shaped steps through the KV
  cache, after one warm-up step), TTFT (batch-1 prefill of the prompt to the first token's logits);
* energy per token of batch-1 decoding, from an energy meter the caller passes in (``hwlm.bench``'s
  ``EnergyMeter``, a later stage), with its method as the label, or ``n/a``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from hwlm.model.packing import pack_linears, packed_bytes
from hwlm.model.transformer import KVCache

__all__ = ["quality", "decode_seconds_per_token", "measure_row", "render_table", "model_bytes"]


@torch.inference_mode()
def quality(model: nn.Module, reference: nn.Module | None, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            device: str) -> dict[str, float]:
    """Perplexity of ``model`` and mean per-token KL(reference || model) over ``batches``."""
    nats, kl, count = 0.0, 0.0, 0
    model.eval()
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits, _ = model(x)
        logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        valid = y != -1
        n = int(valid.sum())
        nats += float(F.nll_loss(logp.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum"))
        if reference is not None:
            ref = F.log_softmax(reference(x)[0].float(), dim=-1)
            kl += float((ref.exp() * (ref - logp)).sum(-1)[valid].sum())
        count += n
    count = max(count, 1)
    return {"ppl": math.exp(nats / count), "loss": nats / count, "kl": kl / count if reference is not None else 0.0,
            "tokens": count}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _decode(model: nn.Module, batch: int, steps: int, prompt_len: int, seed: int = 0) -> tuple[float, float]:
    """(prefill seconds, decode seconds per step) for ``steps`` steps at ``batch`` after one warm-up step."""
    cfg = model.cfg
    device = model.wte.weight.device
    prompt_len = min(prompt_len, cfg.block_size // 2)  # small test models have a short context
    steps = max(1, min(steps, cfg.block_size - prompt_len - 1))
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, cfg.vocab_size, (batch, prompt_len), generator=gen).to(device)
    cache = KVCache(cfg, batch_size=batch, max_len=prompt_len + steps + 1, device=device,
                    dtype=model.wte.weight.dtype)
    t0 = time.perf_counter()
    logits, _ = model(prompt, cache=cache, start_pos=0, last_only=True)
    token = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    _sync(device)
    prefill = time.perf_counter() - t0
    logits, _ = model(token, cache=cache, start_pos=prompt_len)  # warm-up step
    token = logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        logits, _ = model(token, cache=cache, start_pos=prompt_len + 1 + i)
        token = logits[:, -1].argmax(-1, keepdim=True)  # greedy: the next token depends on this one
    _sync(device)
    return prefill, (time.perf_counter() - t0) / steps


def decode_seconds_per_token(model: nn.Module, batch: int, steps: int, prompt_len: int = 16) -> float:
    """Seconds of one decode step divided by the batch: the cost of one generated token."""
    return _decode(model, batch, steps, prompt_len)[1] / batch


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, each storage counted once (tied weights share one)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def measure_row(name: str, model: nn.Module, *, weights_file: Path | None, quality_row: dict[str, float],
                baseline_ppl: float | None, batches: list[int], steps: int,
                energy_meter: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """One row of the table for ``model`` (quality measured by the caller, see :func:`quality`)."""
    cfg = model.cfg
    device = model.wte.weight.device
    pack_linears(model)  # timed as hwlm generate / bench infer / serve run it: fp32 on a CPU packed (else nothing)
    kv = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * cfg.block_size * model.wte.weight.element_size()
    row: dict[str, Any] = {
        "name": name, "ppl": quality_row["ppl"], "kl": quality_row["kl"],
        "ppl_delta_pct": None if baseline_ppl is None else 100.0 * (quality_row["ppl"] / baseline_ppl - 1.0),
        "size_mb": None if weights_file is None else weights_file.stat().st_size / 1e6,
        "memory_mb": (model_bytes(model) + packed_bytes(model) + kv) / 1e6,
    }
    prefill, _ = _decode(model, 1, 1, 16)  # first call pays one-time costs (kernel packing, allocations)
    prefill, _ = _decode(model, 1, 1, 16)
    row["ttft_ms"] = 1e3 * prefill
    for b in batches:
        row[f"tok_s_b{b}"] = b / _decode(model, b, steps, 16)[1]
    row["energy_j_per_token"], row["energy_source"] = None, "n/a (no meter)"
    if energy_meter is not None:
        meter = energy_meter(device.type)
        meter.start()
        _, per_step = _decode(model, 1, steps, 16)
        result = meter.stop()
        if result.joules is not None:
            row["energy_j_per_token"] = result.joules / (steps + 1)
        row["energy_source"] = result.method
    return row


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render_table(rows: list[dict[str, Any]], batches: list[int]) -> str:
    """The rows as a Markdown table (what ``hwlm compress`` prints and docs/benchmarks.md holds)."""
    head = (["model", "ppl", "ppl vs orig", "KL", "disk MB", "memory MB"] + [f"tok/s b{b}" for b in batches]
            + ["TTFT ms", "J/token (source)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        delta = "-" if r.get("ppl_delta_pct") is None else f"{r['ppl_delta_pct']:+.2f}%"
        cells = [r["name"], _fmt(r["ppl"], ".3f"), delta, _fmt(r["kl"], ".2g"), _fmt(r["size_mb"], ".2f"),
                 _fmt(r["memory_mb"], ".1f")]
        cells += [_fmt(r.get(f"tok_s_b{b}"), ",.0f") for b in batches]
        energy = r.get("energy_j_per_token")
        cells += [_fmt(r["ttft_ms"], ".1f"),
                  f"{_fmt(energy, '.3g')} ({r.get('energy_source', 'n/a')})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
