"""Tests for hwlm.hw: CPU flag parsing, detect(), NVML readings through a fake pynvml, the matmul probe, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from hwlm import hw
from hwlm.cli import main
from hwlm.errors import HardwareError

CPUINFO = """processor\t: 0
model name\t: Example CPU 9000
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse avx2 fma avx512f amx_tile

processor\t: 1
model name\t: Example CPU 9000
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse avx2 fma avx512f amx_tile

processor\t: 2
model name\t: Example CPU 9000
physical id\t: 0
core id\t: 1
flags\t\t: fpu sse avx2 fma avx512f amx_tile
"""


def test_linux_cpuinfo_parsing_counts_physical_cores_and_flags():
    model, flags, physical = hw._linux_cpu(CPUINFO)
    assert model == "Example CPU 9000"
    assert physical == 2  # three logical processors on two cores
    feats = hw.cpu_features_from_flags(flags)
    assert feats["avx2"] and feats["fma"] and feats["avx512f"] and feats["amx_tile"]
    assert not feats["amx_bf16"] and not feats["avx512_bf16"]


def test_detect_is_json_ready_and_names_the_device():
    info = hw.detect()
    d = info.to_dict()
    json.dumps(d)
    assert d["cpu"]["logical_cores"] >= 1
    assert d["device"] in ("cpu", "cuda", "mps", "xla")
    assert d["device_reason"]
    assert "hwlm will use" in hw.render(info)


def _fake_pynvml(energy_mj: int = 123_456, fail_energy: bool = False) -> types.ModuleType:
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    m.NVMLError = NVMLError
    m.nvmlInit = lambda: None
    m.nvmlShutdown = lambda: None
    m.nvmlSystemGetDriverVersion = lambda: b"555.42"
    m.nvmlDeviceGetHandleByIndex = lambda i: ("h", i)
    m.nvmlDeviceGetPowerUsage = lambda h: 250_000  # mW
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000

    def energy(h):
        if fail_energy:
            raise NVMLError("Not Supported")
        return energy_mj

    m.nvmlDeviceGetTotalEnergyConsumption = energy
    return m


def test_nvml_fill_reads_driver_power_and_energy(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    gpus = [hw.GpuInfo(index=0, name="Fake GPU", memory_bytes=2**30, compute_capability="9.0")]
    hw._nvml_fill(gpus)
    g = gpus[0]
    assert (g.driver, g.nvml, g.power_w, g.power_limit_w, g.energy_j) == ("555.42", "ok", 250.0, 700.0, 123.456)


def test_nvml_unsupported_counter_leaves_field_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(fail_energy=True))
    gpus = [hw.GpuInfo(index=0, name="Fake GPU", memory_bytes=2**30, compute_capability="8.0")]
    hw._nvml_fill(gpus)
    assert gpus[0].energy_j is None and gpus[0].power_w == 250.0


def test_quick_matmul_peak_is_positive_and_cached():
    from hwlm.train.runtime import quick_matmul_peak
    a = quick_matmul_peak("cpu", "fp32")
    assert a > 1e8  # any CPU that runs torch does more than 0.1 GFLOP/s
    assert quick_matmul_peak("cpu", "fp32") == a


def test_unknown_dtype_is_one_line_hardware_error():
    from hwlm.train.runtime import quick_matmul_peak
    with pytest.raises(HardwareError, match="unknown data type 'fp7'; choose one of fp32, tf32, bf16, fp16, int8"):
        quick_matmul_peak("cpu", "fp7")


def test_hw_is_detection_only():
    """Measuring lives in hwlm.device (a device's clock), hwlm.train.runtime (training's probe and allocator
    setting) and hwlm.bench.measure; hwlm.hw only says what the machine is."""
    for name in ("quick_matmul_peak", "measure_seconds", "synchronize", "torch_dtype", "keep_freed_memory", "DTYPES"):
        assert not hasattr(hw, name), name


def test_cli_hw_json(capsys):
    assert main(["hw", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"cpu", "gpus", "memory_bytes", "device"} <= set(d)


def test_hw_module_does_not_import_torch():
    code = "import sys, hwlm.hw; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
