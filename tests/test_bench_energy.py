"""Tests for hwlm.bench.energy: RAPL against a fake sysfs tree, NVML through a fake pynvml, the estimate."""

from __future__ import annotations

import sys
import types

import pytest

from hwlm.bench.energy import EnergyMeter, RaplReader
from hwlm.errors import HardwareError


def _zone(root, name, label, uj, max_uj=1_000_000_000):
    z = root / name
    z.mkdir()
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z


@pytest.fixture
def rapl(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "package-0", 5_000_000)
    _zone(tmp_path, "intel-rapl:1", "package-1", 7_000_000)
    _zone(tmp_path, "intel-rapl:0:0", "core", 1_000_000)      # sub-zone: part of package-0
    _zone(tmp_path, "intel-rapl:2", "psys", 9_000_000)        # platform: would double count
    return tmp_path


def test_rapl_reader_sums_packages_only(rapl):
    r = RaplReader(rapl)
    assert [z.name for z in r.zones] == ["intel-rapl:0", "intel-rapl:1"]
    start = r.read_uj()
    (rapl / "intel-rapl:0" / "energy_uj").write_text("7000000\n")   # +2 J
    (rapl / "intel-rapl:1" / "energy_uj").write_text("7500000\n")   # +0.5 J
    assert r.joules_between(start, r.read_uj()) == pytest.approx(2.5)


def test_rapl_wraparound_uses_max_energy_range(rapl):
    r = RaplReader(rapl)
    start = [999_000_000, 7_000_000]
    end = [1_000_000, 7_000_000]  # package-0 wrapped at 1e9 uJ: 1 J to the top, 1 J after
    assert r.joules_between(start, end) == pytest.approx(2.0)


def test_rapl_psys_used_when_no_package_zone(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "psys", 1)
    assert [z.name for z in RaplReader(tmp_path).zones] == ["intel-rapl:0"]


def test_meter_measures_with_rapl(rapl):
    m = EnergyMeter("cpu", "auto", rapl_root=rapl)
    m.start()
    (rapl / "intel-rapl:0" / "energy_uj").write_text("8000000\n")
    res = m.stop()
    assert res.method == "measured-rapl" and res.joules == pytest.approx(3.0)


def test_counter_that_does_not_advance_is_not_zero_joules(rapl):
    m = EnergyMeter("cpu", "auto", tdp_w=100, rapl_root=rapl)
    m.start()
    res = m.stop()
    assert res.method in ("estimate-tdp", "none")
    assert res.joules != 0
    assert "did not advance" in res.detail


def test_unreadable_rapl_counter(rapl, monkeypatch):
    import pathlib
    real = pathlib.Path.read_text

    def deny(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", deny)
    with pytest.raises(HardwareError, match=r"RAPL counter .*intel-rapl:0/energy_uj is not readable"):
        EnergyMeter("cpu", "rapl", rapl_root=rapl)
    m = EnergyMeter("cpu", "auto", rapl_root=rapl)  # auto falls back to the estimate and says why
    m.start()
    sum(i * i for i in range(200_000))
    res = m.stop()
    assert res.method in ("estimate-tdp", "none") and "not readable" in res.detail


def test_forced_rapl_without_counters_is_one_line_error(tmp_path):
    with pytest.raises(HardwareError, match="no RAPL counters under .*; use --energy estimate"):
        EnergyMeter("cpu", "rapl", rapl_root=tmp_path)


def test_cpu_estimate_is_labelled_and_uses_tdp(tmp_path):
    m = EnergyMeter("cpu", "estimate", tdp_w=50, rapl_root=tmp_path)
    m.start()
    sum(i * i for i in range(300_000))
    res = m.stop()
    if res.joules is not None:  # a busy CPU gives a positive estimate; never a 0 J "measurement"
        assert res.method == "estimate-tdp" and res.joules > 0
        assert "TDP 50 W (--tdp)" in res.detail
        assert res.joules <= 50 * res.seconds + 1e-9


def test_bad_tdp_and_mode():
    with pytest.raises(HardwareError, match="--tdp must be a positive number of watts, got -3"):
        EnergyMeter("cpu", "estimate", tdp_w=-3)
    with pytest.raises(HardwareError, match="unknown energy mode 'joules'"):
        EnergyMeter("cpu", "joules")


def _fake_pynvml(readings, supported=True):
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    it = iter(readings)
    m.NVMLError = NVMLError
    m.nvmlInit = lambda: None
    m.nvmlDeviceGetHandleByIndex = lambda i: i

    def energy(h):
        if not supported:
            raise NVMLError("Not Supported")
        return next(it)

    m.nvmlDeviceGetTotalEnergyConsumption = energy
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50, memory=10)
    return m


def test_nvml_energy_counter(monkeypatch):
    from hwlm.bench import energy
    monkeypatch.setattr(energy, "NVML_MIN_SECONDS", 0.0)
    # readings in mJ: one probe on open, then start and stop
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([1_000_000, 1_000_000, 1_450_000]))
    m = EnergyMeter("cuda:0", "auto")
    m.start()
    res = m.stop()
    assert res.method == "measured-nvml" and res.joules == pytest.approx(450.0)


def test_nvml_window_too_short_for_the_counter_is_not_a_measurement(monkeypatch):
    # a 2.4 kJ jump in a few microseconds is the counter's coarse update, not real power
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([0, 0, 2_400_000]))
    m = EnergyMeter("cuda:0", "auto")
    m.start()
    res = m.stop()
    assert res.method == "estimate-tdp" and "too short for the NVML energy counter" in res.detail


def test_nvml_unsupported_falls_back_to_power_limit_estimate(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([], supported=False))
    with pytest.raises(HardwareError, match="NVML energy counter of GPU 0 is unreadable"):
        EnergyMeter("cuda", "nvml")
    m = EnergyMeter("cuda", "auto")
    m.start()
    res = m.stop()
    # no counter: estimate from the NVML power limit (700 W) and utilization (50%)
    assert res.method == "estimate-tdp" and "TDP 700 W (NVML power limit) x NVML utilization 0.50" in res.detail
    assert res.joules == pytest.approx(350 * res.seconds)
    assert "unreadable" in res.detail


def test_gpu_without_nvml_or_tdp_reports_no_energy(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    m = EnergyMeter("cuda", "auto")
    m.start()
    res = m.stop()
    assert res.joules is None and res.method == "none" and "pass --tdp WATTS" in res.detail
    m = EnergyMeter("cuda", "auto", tdp_w=300)
    m.start()
    res = m.stop()
    assert res.method == "estimate-tdp" and "assumed fully busy" in res.detail and res.joules > 0


def test_nvml_missing_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(HardwareError, match="nvidia-ml-py \\(pynvml\\) is not installed"):
        EnergyMeter("cuda", "nvml")
