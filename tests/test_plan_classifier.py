"""``hwlm.plan.classifier``: the LSTM / MLP / bag-of-words counts equal torch's, and the recipes are priced torch-free.

The formulas (``hwlm.formulas.classifier_*``) are checked against the real modules of ``hwlm.model.classifier``
(parameters; the MLP's FLOPs against ``torch.utils.flop_counter``); the planner is checked for the behaviour its
model claims (a GPU LSTM is launch-bound, a CPU one is not; more data costs proportionally more), for its one-line
errors, and for never importing torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from classify_tiny import prepare_cls
from hwlm.cli import main
from hwlm.errors import PlanError
from hwlm.formulas import ClassifierShape, classifier_forward_flops, classifier_param_count
from hwlm.plan.classifier import ClassifierJob, estimate_classifier, job_from_recipe

SPECS = [
    {"kind": "lstm", "n_classes": 3, "vocab_size": 300, "pad_id": 0, "embed": 24, "hidden": 16, "layers": 1,
     "dropout": 0.0, "max_len": 32},
    {"kind": "lstm", "n_classes": 2, "vocab_size": 500, "pad_id": 0, "embed": 16, "hidden": 40, "layers": 3,
     "dropout": 0.1, "max_len": 32},
    {"kind": "mlp", "n_classes": 10, "n_features": 64, "hidden": 256, "layers": 2, "dropout": 0.1},
    {"kind": "mlp", "n_classes": 4, "n_features": 7, "hidden": 9, "layers": 1, "dropout": 0.0},
    {"kind": "bow", "n_classes": 2, "vocab_size": 300, "pad_id": 0, "embed": 8, "ngrams": 2, "buckets": 1024,
     "dropout": 0.0, "max_len": 32},
    {"kind": "bow", "n_classes": 5, "vocab_size": 300, "pad_id": 0, "embed": 8, "ngrams": 1, "buckets": 1024,
     "dropout": 0.0, "max_len": 32},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['kind']}-{s.get('layers', s.get('ngrams'))}")
def test_param_count_equals_the_torch_module(spec: dict) -> None:
    from hwlm.model.classifier import build_classifier

    model = build_classifier(spec)
    assert classifier_param_count(ClassifierShape.from_spec(spec)) == sum(p.numel() for p in model.parameters())


def test_mlp_forward_flops_equal_torch_flop_counter() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hwlm.model.classifier import build_classifier

    spec = SPECS[2]
    model = build_classifier(spec).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(5, spec["n_features"]))
    assert classifier_forward_flops(ClassifierShape.from_spec(spec), 0, 5) == counter.get_total_flops()


def test_lstm_flops_count_each_real_token_and_the_head() -> None:
    shape = ClassifierShape.from_spec(SPECS[1])
    per_token = sum(2 * 4 * h * (n + h) for n, h in shape.lstm_layers())
    assert classifier_forward_flops(shape, 100, 4) == 100 * per_token + 4 * 2 * 40 * 2


def test_recipes_are_priced_with_every_figure() -> None:
    lstm = estimate_classifier(job_from_recipe("lstm-sentences", hardware="h100-sxm"))
    mlp = estimate_classifier(job_from_recipe("digits-mlp", hardware="h100-sxm"))
    assert (lstm.kind, mlp.kind) == ("lstm", "mlp")
    assert lstm.params == 1_156_354 and mlp.params == 85_002
    for e in (lstm, mlp):
        assert e.fits and e.time_s > e.train_time_s > 0 and e.cost_usd > 0 and e.energy_kwh > 0
        assert e.infer_examples_per_s > 0 and e.infer_cost_per_million_usd > 0
    names = {t.name for t in lstm.terms}
    assert {"recurrent_time", "recurrent_forward_time", "step_time", "mfu", "memory", "cost"} <= names


def test_a_gpu_lstm_is_launch_bound_and_a_cpu_one_is_not() -> None:
    from hwlm.plan.machine import machine_device

    # A 2-core CPU like the one these numbers were checked on (docs/benchmarks.md): 15 GFLOP/s, 4.9 GB/s.
    small_cpu = machine_device({"fp32": 15e9}, memory_bw=4.9e9, memory_bytes=16e9, name="2-core CPU")

    def step(hardware, batch: int) -> float:
        job = job_from_recipe("lstm-sentences", hardware=hardware, batch_size=batch, power_w=100.0,
                              price_per_hour=1.0)
        return estimate_classifier(job).step_time_s

    assert step("h100-sxm", 128) < 1.3 * step("h100-sxm", 64)   # the same dependent launches per batch
    assert step(small_cpu, 128) > 1.6 * step(small_cpu, 64)     # a CPU core pays the FLOPs


def test_data_folder_sets_the_workload(tmp_path: Path) -> None:
    data = prepare_cls(tmp_path, n=300)
    small = job_from_recipe("lstm-sentences", hardware="h100-sxm", data=data)
    manifest = json.loads((data / "manifest.json").read_text())
    assert small.examples == manifest["splits"]["train"]["examples"] and small.shape.n_classes == 3
    assert small.shape.vocab_size == manifest["vocab_size"] and 4 <= small.mean_len <= 20
    assert small.mean_len <= small.steps_len <= 20
    double = job_from_recipe("lstm-sentences", hardware="h100-sxm", data=data, examples=2 * small.examples)
    assert estimate_classifier(double).steps == pytest.approx(2 * estimate_classifier(small).steps, abs=1)


def test_bad_jobs_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no LSTM, MLP or bag-of-words"):
        job_from_recipe("quickstart", hardware="h100-sxm")
    with pytest.raises(PlanError, match="no readable manifest"):
        job_from_recipe("lstm-sentences", hardware="h100-sxm", data=tmp_path)
    with pytest.raises(PlanError, match="--mean-len"):
        ClassifierJob(shape=ClassifierShape("lstm", 2, 100), hardware="h100-sxm", examples=10)


def test_cli_prices_a_recipe_and_explains(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "train", "--config", "lstm-sentences", "--hardware", "h100-sxm", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "lstm classifier" in out and "recurrent_time" in out and "launch-bound" in out
    assert main(["plan", "train", "--config", "digits-mlp", "--hardware", "a100-sxm-80gb", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "mlp" and data["steps"] == 675 and data["cost_usd"] > 0


def test_cli_errors_name_the_fix(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "train", "--config", "digits-mlp", "--model", "gpt2", "--hardware", "h100-sxm"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["plan", "train", "--hardware", "h100-sxm"]) == 1
    assert "needs --model and --tokens" in capsys.readouterr().err


def test_plan_of_a_classifier_recipe_never_imports_torch() -> None:
    code = ("import sys; from hwlm.cli import main; "
            "main(['plan', 'train', '--config', 'lstm-sentences', '--hardware', 'h100-sxm']); "
            "main(['plan', 'train', '--config', 'digits-mlp', '--hardware', 'tpu-v5e', '--power-w', '200']); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
