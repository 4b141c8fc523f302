"""The loop on this machine: ``hwlm bench peak`` + ``bench train`` -> ``bench calibrate --hardware
this-machine`` -> ``hwlm plan train --calibration FILE`` reads the measured peaks and efficiencies.

Tests never time anything: whether the calibrated plan predicts another workload's measured speed is
benchmarks/calibration_loop.py's question; here the records only carry numbers from one stage to the next.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwlm.bench.records import load_record
from hwlm.cli import main
from hwlm.errors import PlanError
from hwlm.plan import estimate_training
from hwlm.plan.machine import device_from_calibration, machine_device
from hwlm.plan.models import trainable_model

pytestmark = pytest.mark.slow

BENCH = ["--device", "cpu", "--energy", "off", "--model", "tiny", "--steps", "6", "--warmup", "2"]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("loop")
    peak, train = tmp / "peak.json", tmp / "train.json"
    assert main(["bench", "peak", "--device", "cpu", "--dtypes", "fp32", "--size", "256", "--repeats", "3",
                 "--membw-mib", "8", "--energy", "off", "--out", str(peak)]) == 0
    assert main(["bench", "train", *BENCH, "--batch", "8", "--seq", "64", "--peak-record", str(peak),
                 "--out", str(train)]) == 0
    cal = tmp / "calibration.json"
    assert main(["bench", "calibrate", str(peak), str(train), "--hardware", "this-machine", "--out", str(cal)]) == 0
    return {"tmp": tmp, "cal": cal, "train": load_record(train)}


def test_the_plan_uses_the_calibration(loop: dict, capsys: pytest.CaptureFixture) -> None:
    """--hardware omitted: the calibration names this machine, and its train efficiency replaces the
    prior (the same job on the same measured peaks without it is predicted differently)."""
    args = ["plan", "train", "--model", "tiny", "--tokens", "1e6", "--precision", "fp32", "--seq-len", "32",
            "--global-batch", "16", "--micro-batch", "16", "--tp", "1", "--pp", "1", "--zero-stage", "0",
            "--recompute", "none", "--json"]
    capsys.readouterr()
    assert main([*args, "--calibration", str(loop["cal"])]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["hardware"] == "this-machine"
    dev = device_from_calibration(loop["cal"])
    e = estimate_training(trainable_model("tiny", block_size=64), 1e6, dev, 1, precision="fp32", seq_len=32,
                          global_batch=16, micro_batch=16, tp=1, pp=1, zero_stage=0, recompute="none",
                          find_smallest=False)
    assert plan["time_s"] != pytest.approx(e.time_s, rel=1e-9)


def test_calibrate_takes_hardware_not_device(loop: dict, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["bench", "calibrate", str(loop["tmp"] / "peak.json"), "--device", "this-machine",
                 "--out", str(loop["tmp"] / "x.json")]) == 1
    err = capsys.readouterr().err
    assert "takes --hardware this-machine" in err and err.count("\n") == 1


def test_this_machine_device_has_the_measured_peaks(loop: dict) -> None:
    dev = device_from_calibration(loop["cal"])
    peak = load_record(loop["tmp"] / "peak.json")["summary"]
    assert dev.id == "this-machine" and dev.kind == "cpu"
    assert dev.peak_flops("fp32") == pytest.approx(peak["matmul_fp32_flops"])
    assert dev.memory_bw == pytest.approx(peak["membw_bytes_per_s"])


def test_this_machine_needs_a_calibration(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "train", "--model", "tiny", "--tokens", "1e6", "--hardware", "this-machine"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--calibration FILE" in err


def test_calibration_for_a_catalog_part_does_not_describe_this_machine(tmp_path: Path) -> None:
    cal = tmp_path / "c.json"
    cal.write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "entries": [
        {"device": "h100-sxm", "dtype": "bf16", "phase": "train", "efficiency": 0.4}]}))
    with pytest.raises(PlanError, match="has no 'this-machine' entries"):
        device_from_calibration(cal)


def test_machine_device_rejects_bad_numbers() -> None:
    with pytest.raises(PlanError, match="not a positive FLOP/s"):
        machine_device({"fp32": 0.0}, 1e10, 1e9)
    with pytest.raises(PlanError, match="memory bandwidth"):
        machine_device({"fp32": 1e11}, -1.0, 1e9)
    with pytest.raises(PlanError, match="seconds per kernel 0"):
        machine_device({"fp32": 1e11}, 1e10, 1e9, op_overhead_s=0)
    with pytest.raises(PlanError, match="activation copy bandwidth -1"):
        machine_device({"fp32": 1e11}, 1e10, 1e9, act_bw=-1)
    dev = machine_device({"fp32": 1e11}, 1e10, 1e9, op_overhead_s=3e-6, act_bw=4e10)
    assert dev.op_overhead_s == 3e-6 and dev.act_bw == 4e10 and "autograd" in dev.source("op_overhead_s")
