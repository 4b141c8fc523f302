"""Tests for hwlm.bench.peak on the CPU with tiny sizes: what is measured, what is skipped and why."""

from __future__ import annotations

import json

import pytest

from hwlm.bench.peak import PeakConfig, adaptive_inner, format_peak, is_oom, run_peak
from hwlm.bench.records import load_record
from hwlm.cli import main
from hwlm.errors import HardwareError


@pytest.fixture(scope="module")
def record():
    cfg = PeakConfig(device="cpu", dtypes=["fp32", "bf16", "tf32", "int8"], size=64, repeats=3, warmup=1,
                     membw_mib=1, energy="estimate", tdp_w=10)
    return run_peak(cfg)


def test_peak_measures_fp32_with_spread(record):
    s = next(x for x in record["samples"] if x["name"] == "matmul" and x["dtype"] == "fp32")
    st = s["flops_per_s"]
    assert st["count"] == 3 and st["min"] <= st["median"] <= st["max"]
    assert len(s["seconds"]) == 3 and s["n"] == 64
    # the rate is 2 n^3 FLOPs per call divided by seconds per call
    assert st["median"] == pytest.approx(sorted(2 * 64**3 / t for t in s["seconds"])[1])
    assert record["summary"]["matmul_fp32_flops"] == st["median"]


def test_peak_copy_bandwidth_counts_read_and_write(record):
    s = next(x for x in record["samples"] if x["name"] == "membw")
    assert s["bytes"] == 2**20 and s["bytes_moved_per_call"] == 2 * 2**20
    assert record["summary"]["membw_bytes_per_s"] > 0


def test_peak_measures_a_cache_resident_copy(record):
    s = next(x for x in record["samples"] if x["name"] == "cachebw")
    assert s["bytes"] == 512 * 1024 and s["bytes_moved_per_call"] == 2 * 512 * 1024
    assert record["summary"]["cachebw_bytes_per_s"] == s["bytes_per_s"]["median"]
    assert "cache copy 512 KiB" in format_peak(record)
    with pytest.raises(HardwareError, match="--cache-kib must be at least 4"):
        PeakConfig(cache_kib=1)


def test_peak_says_what_it_could_not_measure(record):
    text = " | ".join(record["findings"])
    assert "matmul tf32 on cpu: tf32 is a CUDA tensor-core mode" in text
    assert "matmul int8" not in text and record["summary"]["matmul_int8_flops"] > 0  # torch._int_mm, as w8a8 runs
    assert "h2d: no host-to-device link on cpu" in text
    assert "matmul_tf32_flops" not in record["summary"]
    table = format_peak(record)
    assert "not measured: matmul tf32" in table and "TFLOP/s" in table


def test_energy_figures_are_labelled(record):
    for s in record["samples"]:
        if "energy" in s:
            e = s["energy"]
            assert e["method"] in ("measured-rapl", "estimate-tdp", "none")
            assert e["joules"] is None or e["joules"] > 0


def test_bad_inputs():
    with pytest.raises(HardwareError, match="unknown data type 'fp64'; choose among fp32, tf32, bf16, fp16, int8"):
        PeakConfig(dtypes=["fp64"])
    with pytest.raises(HardwareError, match="--repeats must be >= 1"):
        PeakConfig(repeats=0)
    with pytest.raises(HardwareError, match="unknown device 'gpu'"):
        run_peak(PeakConfig(device="gpu", size=16))


def test_helpers():
    assert adaptive_inner(0.001) == 50 and adaptive_inner(1.0) == 1 and adaptive_inner(0.0) == 100
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch"))


def test_cli_peak_writes_record(tmp_path, capsys):
    out = tmp_path / "peak.json"
    rc = main(["bench", "peak", "--device", "cpu", "--dtypes", "fp32", "--size", "32", "--repeats", "2",
               "--membw-mib", "1", "--energy", "off", "--out", str(out)])
    assert rc == 0
    rec = load_record(out)
    assert rec["benchmark"] == "peak" and rec["machine"]["cpu"]["logical_cores"] >= 1
    assert "record written to" in capsys.readouterr().out
    assert main(["bench", "peak", "--dtypes", "fp8", "--size", "32"]) == 1
    assert "unknown data type 'fp8'" in capsys.readouterr().err
    json.dumps(rec)
