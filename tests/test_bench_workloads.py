"""Tests for hwlm.bench.workloads on the CPU with the 'debug' model: train and infer records, OOM findings."""

from __future__ import annotations

import pytest
import torch

from hwlm.bench import workloads
from hwlm.bench.records import load_record, make_record, write_record
from hwlm.bench.workloads import InferBenchConfig, TrainBenchConfig, format_workload, run_infer_bench, run_train_bench
from hwlm.cli import main
from hwlm.errors import HardwareError
from hwlm.formulas import forward_flops_per_token, lm_head_flops_per_token, train_flops_per_token
from hwlm.model import ModelConfig


def _train_cfg(**kw):
    base = dict(model="debug", device="cpu", batch=2, seq=8, steps=2, warmup=1, energy="estimate", tdp_w=10)
    return TrainBenchConfig(**{**base, **kw})


def test_train_record_has_throughput_percentiles_and_mfu():
    rec = run_train_bench(_train_cfg(datasheet_peak=1e12))
    s = rec["summary"]
    assert rec["benchmark"] == "train" and len(rec["samples"]) == 1
    assert s["steps"] == 2
    assert s["step_s_p50"] <= s["step_s_p90"] <= s["step_s_p99"]
    fpt = train_flops_per_token(ModelConfig.from_name("debug").to_arch(), 8)
    assert s["train_flops_per_token"] == fpt
    assert s["mfu_measured"] == pytest.approx(s["tokens_per_s"] * fpt / s["peak_flops_measured"])
    assert s["mfu_datasheet"] == pytest.approx(s["tokens_per_s"] * fpt / 1e12)
    assert s["peak_memory_bytes"] > 0 and "RSS" in s["memory_method"]
    assert "MFU" in format_workload(rec)


def test_train_mfu_reference_from_peak_record(tmp_path):
    peak = write_record(make_record("peak", {}, [], {"matmul_fp32_flops": 2e9}, machine={}), tmp_path / "p.json")
    s = run_train_bench(_train_cfg(peak_record=str(peak)))["summary"]
    assert s["peak_flops_measured"] == 2e9 and "p.json" in s["mfu_reference"]
    with pytest.raises(HardwareError, match="has no 'matmul_bf16_flops'"):
        run_train_bench(_train_cfg(peak_record=str(peak), precision="bf16"))


def test_oom_is_a_finding_not_a_crash(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(workloads, "_time_training", boom)
    rec = run_train_bench(_train_cfg(batch=4))
    assert rec["samples"] == [] and rec["findings"] == ["out of memory at model debug, batch 4, seq 8 (fp32)"]


def test_size_beyond_free_ram_is_a_finding(monkeypatch):
    monkeypatch.setattr(workloads, "memory_bytes", lambda: (2**30, 1000))
    rec = run_train_bench(_train_cfg())
    assert "out of memory (estimated) at model debug, batch 2, seq 8" in rec["findings"][0]
    rec = run_infer_bench(InferBenchConfig(model="debug", device="cpu", batch_sizes=[1], prompt_lens=[4],
                                           new_tokens=2, repeats=1))
    assert rec["samples"] == [] and "out of memory (estimated) at batch 1, prompt 4" in rec["findings"][0]


def test_bad_precision_and_sizes():
    with pytest.raises(HardwareError, match="precision tf32 needs a CUDA GPU"):
        run_train_bench(_train_cfg(precision="tf32"))
    with pytest.raises(HardwareError, match="precision fp16 training needs a CUDA GPU"):
        run_train_bench(_train_cfg(precision="fp16"))
    with pytest.raises(HardwareError, match="--batch must be at least 1, got 0"):
        run_train_bench(_train_cfg(batch=0))
    with pytest.raises(HardwareError, match=r"--batch-sizes needs one or more values of at least 1, got \[0\]"):
        run_infer_bench(InferBenchConfig(model="debug", device="cpu", batch_sizes=[0]))


def test_infer_grid_record():
    cfg = InferBenchConfig(model="debug", device="cpu", batch_sizes=[1, 2], prompt_lens=[4, 8], new_tokens=3,
                           repeats=2, energy="estimate", tdp_w=10)
    rec = run_infer_bench(cfg)
    assert [(s["batch"], s["prompt_len"]) for s in rec["samples"]] == [(1, 4), (1, 8), (2, 4), (2, 8)]
    assert rec["config"]["packed_layers"] == 0  # every fp32 weight of debug is under 512 KiB: MKL's gemv
    cell = rec["samples"][0]
    assert len(cell["ttft_seconds"]) == 2 and len(cell["tpot_seconds"]) == 2 * 2  # repeats x (new_tokens - 1)
    s = rec["summary"]
    assert s["b2_p8_prefill_tokens_per_s"] == pytest.approx(16 / (s["b2_p8_ttft_ms"] / 1e3))
    # The torch prefill runs last_only=True: the output layer's FLOPs count at each row's last token only.
    arch = ModelConfig.from_name("debug").to_arch()
    flops = 16 * forward_flops_per_token(arch, 8) - 2 * 7 * lm_head_flops_per_token(arch)
    assert s["b2_p8_prefill_flops_per_s"] == pytest.approx(flops / (s["b2_p8_ttft_ms"] / 1e3))
    assert s["b1_p4_tpot_ms_p50"] <= s["b1_p4_tpot_ms_p99"]
    assert s["max_decode_tokens_per_s"] >= s["b1_p4_decode_tokens_per_s"]
    assert "TTFT" in format_workload(rec)


def test_infer_runs_large_fp32_linears_packed_as_generate_and_serve_do():
    cfg = InferBenchConfig(model="debug", device="cpu", batch_sizes=[2], prompt_lens=[4], new_tokens=2, repeats=1,
                           vocab_size=50304, energy="off")
    rec = run_infer_bench(cfg)  # the output layer, 50,304 x 16 fp32 (3.2 MB), is packed for oneDNN
    assert rec["config"]["packed_layers"] == (1 if torch.backends.mkldnn.is_available() else 0)
    assert rec["samples"][0]["batch"] == 2


def test_cli_train_and_infer(tmp_path, capsys):
    t = tmp_path / "t.json"
    assert main(["bench", "train", "--model", "debug", "--device", "cpu", "--batch", "1", "--seq", "8", "--steps",
                 "2", "--warmup", "1", "--energy", "off", "--out", str(t)]) == 0
    assert load_record(t)["summary"]["tokens_per_s"] > 0
    i = tmp_path / "i.json"
    assert main(["bench", "infer", "--model", "debug", "--device", "cpu", "--batch-sizes", "1", "--prompt-lens",
                 "4", "--new-tokens", "2", "--repeats", "1", "--out", str(i)]) == 0
    assert load_record(i)["benchmark"] == "infer"
    assert main(["bench", "train", "--model", "gpt5", "--out", str(tmp_path / "x.json")]) == 1
    assert "unknown model preset 'gpt5'" in capsys.readouterr().err
