"""The loop on this machine: ``hwlm bench peak`` + ``bench train`` -> ``bench calibrate`` -> ``hwlm plan
train --hardware this-machine --calibration FILE`` predicts another bench workload.

Not circular: the calibration comes from one workload (tiny model, batch 8 x 64 tokens) and the
planner predicts another (batch 16 x 32 tokens: same tokens per step, a different shape and
attention FLOP count), compared with that workload's own record. Tests never time anything:
the assertions relate the records' numbers to the planner's. The tolerance is 15% plus the
two records' own step-time spread (p90/p50 - 1), since on a shared 2-core machine other
processes move the measurement itself.
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


def _bench(tmp: Path) -> tuple[Path, list[Path], Path]:
    """Peak, then the two workloads alternately twice: other processes on a shared machine slow
    some runs down, and the faster of two alternating runs is the machine's own speed (calibrate
    keeps the highest rate of its records; the target is the faster record too)."""
    peak = tmp / "peak.json"
    assert main(["bench", "peak", "--device", "cpu", "--dtypes", "fp32", "--size", "256", "--repeats", "5",
                 "--membw-mib", "32", "--energy", "off", "--out", str(peak)]) == 0
    calib, target = [], []
    for i in range(2):
        for batch, seq, out in ((8, 64, calib), (16, 32, target)):
            path = tmp / f"train-b{batch}-{i}.json"
            assert main(["bench", "train", *BENCH, "--batch", str(batch), "--seq", str(seq), "--peak-record",
                         str(peak), "--out", str(path)]) == 0
            out.append(path)
    fastest = max(target, key=lambda p: load_record(p)["summary"]["tokens_per_s"])
    return peak, calib, fastest


def _spread(rec: dict) -> float:
    return rec["summary"]["step_s_p90"] / rec["summary"]["step_s_p50"] - 1


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("loop")
    peak, calib, target = _bench(tmp)
    cal = tmp / "calibration.json"
    assert main(["bench", "calibrate", str(peak), *map(str, calib), "--device", "this-machine",
                 "--out", str(cal)]) == 0
    best = max((load_record(p) for p in calib), key=lambda r: r["summary"]["tokens_per_s"])
    return {"tmp": tmp, "cal": cal, "calib": best, "target": load_record(target)}


def test_calibrated_plan_predicts_another_workload(loop: dict, capsys: pytest.CaptureFixture) -> None:
    rec = loop["target"]
    cfg = rec["config"]
    tokens = cfg["batch"] * cfg["seq"] * 10
    capsys.readouterr()
    assert main(["plan", "train", "--model", "tiny", "--calibration", str(loop["cal"]), "--tokens", str(tokens),
                 "--precision", "fp32", "--seq-len", str(cfg["seq"]), "--global-batch", str(cfg["batch"]),
                 "--micro-batch", str(cfg["batch"]), "--tp", "1", "--pp", "1", "--zero-stage", "0",
                 "--recompute", "none", "--json"]) == 0  # --hardware omitted: the calibration names this machine
    plan = json.loads(capsys.readouterr().out)
    assert plan["hardware"] == "this-machine"
    predicted = tokens / (plan["time_s"] - plan["overhead_time_s"])  # steps alone, as the bench times them
    measured = rec["summary"]["tokens_per_s"]
    tolerance = 0.15 + _spread(rec) + _spread(loop["calib"])
    assert abs(predicted / measured - 1) <= tolerance, (predicted, measured, tolerance)

    # the same prediction from the uncalibrated CPU priors, on the same measured peaks: how far they were
    dev = device_from_calibration(loop["cal"])
    e = estimate_training(trainable_model("tiny", block_size=64), tokens, dev, 1, precision="fp32",
                          seq_len=cfg["seq"], global_batch=cfg["batch"], micro_batch=cfg["batch"], tp=1, pp=1,
                          zero_stage=0, recompute="none", find_smallest=False)
    prior = tokens / (e.time_s - e.overhead_time_s)
    # Reported, not asserted: the priors now model small CPU runs well enough that which of the two
    # lands nearer depends on the machine's noise, and a test must not hinge on that.
    print(f"calibrated {predicted:.0f} tokens/s, priors {prior:.0f}, measured {measured:.0f}")
    assert prior > 0


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
