"""hwlm compress --method distill: a smaller student learns the teacher's distribution; it is an ordinary run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hwlm.compress import CompressConfig, compress
from hwlm.compress.distill import kl_div, student_config
from hwlm.compress.table import quality
from hwlm.data import eval_batches
from hwlm.model import ModelConfig, Transformer
from hwlm.train.load import load_model

from compress_fixtures import TABLE


def test_kl_div_equals_the_definition() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    p, q = F.softmax(t / 2, -1), F.softmax(s / 2, -1)
    manual = (p * (p.log() - q.log())).sum(-1).mean() * 4
    assert torch.allclose(kl_div(s, t, 2.0), manual, atol=1e-6)
    assert float(kl_div(t, t, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_student_takes_the_teacher_vocabulary_and_context() -> None:
    teacher = ModelConfig.from_name("tiny", vocab_size=777, block_size=48)
    student = student_config("debug", teacher)
    assert student.vocab_size == 777 and student.block_size == 32 and student.n_embd == 16


@pytest.mark.slow
def test_distilled_student_is_a_run_closer_to_the_teacher(small_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    result = compress(CompressConfig(run=small_run, method="distill", model="debug", steps=40, out=out, **TABLE))
    done = result.record["distill"]
    assert done["student_params"] < done["teacher_params"]
    assert done["loss_first_last"][1] < done["loss_first_last"][0]
    student = load_model(out)
    teacher = load_model(small_run)
    assert student.model_cfg.n_embd == 16 and student.model_cfg.vocab_size == teacher.model_cfg.vocab_size
    assert student.tokenizer.to_str() == teacher.tokenizer.to_str()  # usable as a speculative draft
    fresh = Transformer(student.model_cfg).eval()

    def kl(model: torch.nn.Module) -> float:
        return quality(model, teacher.model, eval_batches(tiny_data, "val", 4, 32, max_batches=4), "cpu")["kl"]

    assert kl(student.model) < 0.5 * kl(fresh)
    assert result.rows[1]["name"] == "distill -> debug"
