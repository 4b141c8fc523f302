"""``hwlm plan`` command line: JSON keys, errors on one line, number parsing, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hwlm.cli import main
from hwlm.cli.plan import parse_duration, parse_number
from hwlm.errors import PlanError


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_train_json_keys(capsys) -> None:
    d = _json(capsys, ["plan", "train", "--model", "llama-2-7b", "--tokens", "2T", "--hardware", "a100-80gb",
                       "--devices", "256", "--json"])
    for key in ("flops", "time_s", "device_hours", "memory_per_device_bytes", "fits", "energy_kwh", "co2_kg",
                "cost_usd", "layout"):
        assert key in d
    assert d["tokens"] == 2e12 and d["fits"] is True and "terms" not in d


def test_infer_json_keys(capsys) -> None:
    d = _json(capsys, ["plan", "infer", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--devices", "1",
                       "--batch", "4", "--prompt-len", "1k", "--gen-len", "256", "--precision", "fp8", "--json"])
    for key in ("ttft_s", "tpot_s", "throughput_tokens_per_s", "memory_per_device_bytes", "fits",
                "energy_per_token_j", "cost_per_million_tokens_usd"):
        assert key in d
    assert d["prompt_len"] == 1000


def test_explain_prints_terms(capsys) -> None:
    assert main(["plan", "train", "--model", "gpt2", "--tokens", "1e9", "--hardware", "h100-sxm", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "How this was computed" in out and "matmul_time" in out and "arXiv:1910.02054" in out
    d = _json(capsys, ["plan", "infer", "--model", "gpt2", "--hardware", "h100-sxm", "--json", "--explain"])
    assert any(t["name"] == "tpot" for t in d["terms"])


def test_other_commands(capsys) -> None:
    assert main(["plan", "models"]) == 0
    assert "llama-3.1-405b" in capsys.readouterr().out
    assert main(["plan", "hardware", "--kind", "tpu"]) == 0
    assert "tpu-v4" in capsys.readouterr().out
    assert main(["plan", "hardware", "h100"]) == 0
    assert "h100-sxm" in capsys.readouterr().out
    d = _json(capsys, ["plan", "optimal", "--flops", "1e23", "--json"])
    assert d["params"] > 1e9 and d["tokens"] > 1e11
    d = _json(capsys, ["plan", "recommend", "--model", "gpt2", "--tokens", "10B", "--kind", "gpu",
                       "--max-devices", "8", "--objective", "cost", "--json"])
    assert d["best"] is not None and d["objective"] == "cost"


@pytest.mark.parametrize("argv, message", [
    (["plan", "train", "--model", "llama-9000", "--tokens", "1e9", "--hardware", "h100-sxm"], "unknown model 'llama-9000'"),
    (["plan", "train", "--model", "gpt2", "--tokens", "1e9", "--hardware", "h1000"], "unknown hardware 'h1000'"),
    (["plan", "infer", "--model", "gpt2", "--hardware", "h100-sxm", "--precision", "int3"], "precision 'int3'"),
    (["plan", "train", "--model", "gpt2", "--tokens", "1e9", "--hardware", "h100-sxm", "--devices", "8", "--tp", "5"],
     "tp=5 x pp=1 does not divide --devices 8"),
])
def test_errors_are_one_line(capsys, argv, message) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwlm: error: ") and message in err and "\n" not in err


def test_numbers_and_durations() -> None:
    assert parse_number("2T") == 2e12 and parse_number("1.4e12") == 1.4e12 and parse_number("300B") == 3e11
    assert parse_number("7k") == 7000 and parse_number("1_000") == 1000
    assert parse_duration("30d") == 30 * 86400 and parse_duration("12h") == 43200 and parse_duration("90") == 90
    with pytest.raises(PlanError, match="cannot read the number '2Q'"):
        parse_number("2Q")
    with pytest.raises(PlanError, match="cannot read the duration"):
        parse_duration("soon")


def test_bad_number_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", "train", "--model", "gpt2", "--tokens", "lots", "--hardware", "h100-sxm"])
    assert exc.value.code == 2
    assert "cannot read the number 'lots'" in capsys.readouterr().err


def test_plan_never_imports_torch() -> None:
    code = ("import sys, hwlm.plan, hwlm.cli.plan; from hwlm.plan import estimate_training, recommend; "
            "estimate_training('llama-2-7b', 2e12, 'a100-80gb', 256); recommend('gpt2', tokens=1e9, max_devices=8); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plan_cli_never_imports_torch() -> None:
    code = ("import sys; from hwlm.cli import main; main(['plan', 'models']); "
            "bad = [m for m in sys.modules if m == 'torch']; assert not bad, 'hwlm plan imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_public_api_all_resolves() -> None:
    import hwlm.plan as plan

    assert plan.__all__ and all(hasattr(plan, name) for name in plan.__all__)
    assert {"estimate_training", "estimate_inference", "recommend", "compute_optimal", "get_device"} <= set(plan.__all__)


def test_steady_state_and_graphs_in_json(capsys) -> None:
    d = _json(capsys, ["plan", "train", "--model", "gpt2-124m", "--tokens", "3276800", "--hardware", "h200",
                       "--seq-len", "1024", "--global-batch", "16", "--json"])
    assert d["tokens_per_s"] == pytest.approx(d["tokens"] / d["steady_time_s"])
    assert d["step_time_s"] == pytest.approx(16 * 1024 / d["tokens_per_s"])
    assert d["run_tokens_per_s"] < d["tokens_per_s"] and d["layout"]["micro_batch"] == 16
    eager = _json(capsys, ["plan", "infer", "--model", "gpt2-124m", "--hardware", "h200", "--json"])
    graphs = _json(capsys, ["plan", "infer", "--model", "gpt2-124m", "--hardware", "h200", "--cuda-graphs", "--json"])
    assert eager["graphs"] is False and graphs["graphs"] is True and graphs["tpot_s"] < eager["tpot_s"]
