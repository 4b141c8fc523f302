"""Distillation: train a smaller student (a model preset) from a run as teacher.

Loss = ``alpha * T^2 * KL(teacher || student)`` at temperature T on the logits (Hinton et al. 2015)
+ ``(1 - alpha) *`` the usual next-token cross-entropy, on the teacher's training data. The student
shares the teacher's tokenizer and vocabulary (so it can serve as the draft model of speculative
decoding) and its context is at most the teacher's. The result is an ordinary float run.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hwlm.compress.finetune import train_steps
from hwlm.model import ModelConfig, Transformer

__all__ = ["kl_div", "distill_model", "student_config"]


def kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean KL(teacher || student) per token at ``temperature``, scaled by T^2."""
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1).flatten(0, 1)  # (N, V)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1).flatten(0, 1)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * t * t


def student_config(preset: str, teacher: ModelConfig) -> ModelConfig:
    """The student preset with the teacher's vocabulary and at most the teacher's context."""
    base = ModelConfig.from_name(preset)
    return ModelConfig.from_name(preset, vocab_size=teacher.vocab_size,
                                 block_size=min(base.block_size, teacher.block_size))


def distill_model(teacher: nn.Module, preset: str, data_dir: Path, steps: int, batch_size: int, lr: float,
                  alpha: float, temperature: float, seed: int, key: bytes | None = None) -> tuple[Transformer, dict]:
    """A student trained from ``teacher``; returns it (eval mode) and what was done. ``key`` opens an
    encrypted data folder (else $HWLM_DATA_KEY)."""
    cfg = student_config(preset, teacher.cfg)
    torch.manual_seed(seed)
    device = next(teacher.parameters()).device
    student = Transformer(cfg).to(device)
    teacher.eval()

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits, _ = teacher(x)
        s_logits, _ = student(x)
        lm = F.cross_entropy(s_logits.flatten(0, 1), y.flatten(), ignore_index=-1)
        return alpha * kl_div(s_logits, t_logits, temperature) + (1 - alpha) * lm

    losses = train_steps(student, loss, data_dir, steps, batch_size, lr, seed, key=key)
    return student.eval(), {"student": preset, "steps": steps, "lr": lr, "alpha": alpha,
                            "temperature": temperature, "loss_first_last": [losses[0], losses[-1]],
                            "student_params": student.num_params(), "teacher_params": teacher.num_params()}
