"""Tensor-parallel decoding: attention heads and MLP columns split over torchrun ranks (Megatron-LM style).

Each rank keeps ``n_head / N`` query heads and ``n_kv_head / N`` key/value heads (their rows of the fused
q/k/v matrix and their columns of the output projection), and ``d_ff / N`` MLP hidden units (rows of
the first matrix, gate and up alike, and columns of the second). A block then needs one all-reduce
after each of its two row-parallel projections (Shoeybi et al. 2019, sec. 3); the bias of those is
added once, after the sum. Embeddings, norms and the output layer are replicated, so every rank ends
with the same logits; rank 0's sampled token is broadcast so that the ranks never drift apart.
Each rank's KV cache holds only its own heads: the cache shrinks with N as the weights do.

The maths is ``hwlm.model.functional.forward_past`` on a rank's slice (tested: logits of 2 gloo
processes equal one process within 1e-5 in fp32). On a CPU host the ranks share one memory bus
and the all-reduces cost more than the split saves, so ``--nproc`` there checks the sharded path
(and is the road to several GPUs with NCCL); it is not a speed-up.

    hwlm generate --run runs/train --nproc 2 --temperature 0 --prompt "The"

Process groups come from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
``hwlm generate --nproc N`` starts the workers through ``hwlm.train.launch``. As there, ``finish``
passes a barrier before leaving the group: a rank that tears gloo down while a peer still has
traffic in flight makes that peer abort at exit.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from hwlm.errors import ConfigError
from hwlm.model.config import ModelConfig
from hwlm.model.functional import LayerWeights, Past, empty_past, forward_past
from hwlm.model.generation import check_args, decode_loop, sample_next
from hwlm.model.transformer import Transformer

__all__ = ["TensorParallel", "check_tp", "shard_layers"]


def check_tp(cfg: ModelConfig, world: int) -> None:
    """Raise ConfigError unless ``world`` ranks can split ``cfg``'s heads, key/value heads and MLP width evenly."""
    if world < 1:
        raise ConfigError(f"--nproc {world} must be at least 1")
    divisors = [d for d in range(1, cfg.n_head + 1) if cfg.n_head % d == 0 and cfg.n_kv_head % d == 0
                and cfg.d_ff % d == 0]
    if world not in divisors:
        raise ConfigError(f"--nproc {world} does not divide the model's {cfg.n_head} attention heads "
                          f"({cfg.n_kv_head} key/value heads, MLP width {cfg.d_ff}) evenly: choose one of "
                          f"{', '.join(map(str, divisors))}")


def _rows(w: torch.Tensor | None, start: int, size: int) -> torch.Tensor | None:
    return None if w is None else w.narrow(0, start, size)


def _cat_rows(w: torch.Tensor | None, spans: list[tuple[int, int]]) -> torch.Tensor | None:
    if w is None:
        return None
    return torch.cat([w.narrow(0, s, n) for s, n in spans]).contiguous()


def shard_layers(model: Transformer, rank: int, world: int) -> list[LayerWeights]:
    """Rank ``rank``'s slice of every block: its heads' q/k/v rows and output columns, its MLP units."""
    cfg = model.cfg
    check_tp(cfg, world)
    H, K, D, F = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_ff
    Hl, Kl, Fl = H // world, K // world, F // world
    qkv_spans = [(rank * Hl * D, Hl * D), (H * D + rank * Kl * D, Kl * D), ((H + K) * D + rank * Kl * D, Kl * D)]
    out = []
    for b in model.h:
        a, m = b.attn, b.mlp
        fc_spans = [(rank * Fl, Fl)] + ([(F + rank * Fl, Fl)] if m.gated else [])  # gate rows, then up rows
        out.append(LayerWeights(
            ln_1=b.ln_1, ln_2=b.ln_2, n_head=Hl, n_kv_head=Kl,
            qkv_w=_cat_rows(a.c_attn.weight, qkv_spans), qkv_b=_cat_rows(a.c_attn.bias, qkv_spans),
            proj_w=a.c_proj.weight.narrow(1, rank * Hl * D, Hl * D).contiguous(), proj_b=a.c_proj.bias,
            fc_w=_cat_rows(m.c_fc.weight, fc_spans), fc_b=_cat_rows(m.c_fc.bias, fc_spans),
            mlp_proj_w=m.c_proj.weight.narrow(1, rank * Fl, Fl).contiguous(), mlp_proj_b=m.c_proj.bias,
            gated=m.gated))
    return out


def _free_full_block_weights(model: Transformer) -> None:
    """Drop the unsharded block matrices (each rank keeps only its slices), so memory scales down with N."""
    for b in model.h:
        for lin in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj):
            lin.weight = nn.Parameter(lin.weight.new_empty(0), requires_grad=False)


class TensorParallel:
    """This rank's share of a model in a torchrun process group: ``forward`` and ``generate`` as one process."""

    def __init__(self, rank: int, world: int, device: torch.device, owns_group: bool) -> None:
        self.rank, self.world, self.device, self.owns_group = rank, world, device, owns_group
        self.model: Transformer | None = None
        self.layers: list[LayerWeights] = []

    @classmethod
    def start_group(cls, device_type: str = "cpu") -> TensorParallel:
        """Join torchrun's group: gloo on the CPU, NCCL on CUDA (one GPU per rank, by LOCAL_RANK)."""
        try:
            rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        except (KeyError, ValueError):
            raise ConfigError("tensor-parallel decoding runs under torchrun: use `hwlm generate --nproc N`") from None
        if device_type == "cuda":
            if local >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK {local} has no GPU: this host has {torch.cuda.device_count()}; "
                                  "start at most one process per GPU")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        elif device_type == "cpu":
            device = torch.device("cpu")
        else:
            raise ConfigError(f"tensor-parallel decoding runs on CUDA or the CPU, not {device_type}")
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(rank, world, device, owns)

    def shard(self, model: Transformer) -> None:
        """Take this rank's slices of ``model`` (on this rank's device); the full block matrices are freed."""
        self.model = model.to(self.device).eval()
        self.layers = shard_layers(self.model, self.rank, self.world)
        _free_full_block_weights(self.model)

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    @torch.no_grad()
    def forward(self, idx: torch.Tensor, past: Past | None = None) -> tuple[torch.Tensor, Past]:
        """Logits (B, T, V), the same on every rank, and this rank's present keys/values (its heads only)."""
        assert self.model is not None, "call shard(model) first"
        if past is None:
            past = empty_past(self.model, idx.size(0), self.layers[0].n_kv_head)
        return forward_past(self.model, idx.to(self.device), past, self.layers, self._reduce)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos_id: int | None = None) -> Iterator[int]:
        """New token ids as ``hwlm.model.generate`` yields them; every rank must call it with the same arguments."""
        assert self.model is not None, "call shard(model) first"
        cfg = self.model.cfg
        check_args(prompt_ids, max_new_tokens, temperature, top_k, top_p, cfg.vocab_size)
        if max_new_tokens == 0:
            return
        generator = None
        if seed is not None and temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(seed)

        def sample(logits: torch.Tensor) -> int:
            # Rank 0 decides: its token is broadcast, so ranks agree even if sampling round-off differed.
            token = torch.tensor([sample_next(logits, temperature, top_k, top_p, generator)], device=self.device)
            dist.broadcast(token, 0)
            return int(token)

        history = [int(t) for t in prompt_ids][-cfg.block_size:]
        yield from decode_loop(_TPSteps(self), history, max_new_tokens, max(1, cfg.block_size // 2), sample, eos_id)

    def finish(self) -> None:
        """Barrier, then leave the process group (if this object joined it)."""
        if self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class _TPSteps:
    """``hwlm.model.generation.Steps`` over a tensor-parallel forward with the past carried as tensors."""

    def __init__(self, tp: TensorParallel) -> None:
        assert tp.model is not None
        self.tp, self.max_len = tp, tp.model.cfg.block_size
        self.past: Past | None = None

    def prefill(self, ids: list[int]) -> torch.Tensor:
        logits, self.past = self.tp.forward(torch.tensor([ids]))
        return logits[0, -1]

    def step(self, token: int, pos: int) -> torch.Tensor:
        logits, self.past = self.tp.forward(torch.tensor([[token]]), self.past)
        return logits[0, -1]
