"""Energy over a stretch of work: RAPL, NVML, or an estimate from TDP, always labelled.

Every figure carries a ``method``:

- ``measured-rapl``: Intel/AMD RAPL package counters under ``/sys/class/powercap``
  (whole CPU sockets, so other processes count too), wrap-around handled with
  ``max_energy_range_uj``;
- ``measured-nvml``: the GPU's cumulative energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer; the GPU board only);
- ``estimate-tdp``: TDP x measured utilization x seconds, with the TDP's origin in
  ``detail`` (``--tdp``, the NVML power limit, or a default per CPU core);
- ``none``: nothing to measure and nothing to estimate from; ``joules`` is None.

A counter that does not advance is not a measurement of 0 J: the meter falls back to
the estimate and says why. Asking for a method this machine lacks raises HardwareError.

    meter = EnergyMeter("cpu")
    meter.start(); work(); result = meter.stop()
    result.joules, result.method   # (41.7, 'estimate-tdp')
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hwlm.errors import HardwareError

__all__ = ["EnergyResult", "RaplReader", "NvmlEnergy", "EnergyMeter", "MODES", "DEFAULT_CPU_WATTS_PER_CORE"]

MODES = ("auto", "rapl", "nvml", "estimate", "off")
RAPL_ROOT = Path("/sys/class/powercap")
# A rough TDP share per physical core for the CPU estimate: server parts run ~3-6 W/core at
# full load (e.g. 350 W / 56 cores), laptops more. The user can give --tdp instead.
DEFAULT_CPU_WATTS_PER_CORE = 5.0
# NVML's energy counter advances in steps of tens of milliseconds: shorter windows read as
# nonsense (0 W or several times the board limit), so they fall back to the estimate.
NVML_MIN_SECONDS = 0.5


@dataclass
class EnergyResult:
    """Energy used over ``seconds``; ``joules`` is None when nothing could be measured or estimated."""

    joules: float | None
    seconds: float
    method: str
    detail: str

    @property
    def watts(self) -> float | None:
        return None if self.joules is None or self.seconds <= 0 else self.joules / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "watts": self.watts}


class RaplReader:
    """Sum of the top-level RAPL package zones (``intel-rapl:N``), in joules, with wrap-around.

    Sub-zones (``intel-rapl:N:M``, core/uncore/dram) are parts of their package and are
    skipped so nothing is counted twice; a ``psys`` zone (whole platform) is used only
    when there is no package zone.
    """

    def __init__(self, root: str | os.PathLike = RAPL_ROOT) -> None:
        self.root = Path(root)
        zones = sorted(p for p in self.root.glob("intel-rapl:*") if p.name.count(":") == 1)
        named = [(z, _read_text(z / "name") or z.name) for z in zones]
        packages = [z for z, name in named if name.startswith("package")]
        self.zones = packages or [z for z, _ in named]

    def available(self) -> bool:
        return bool(self.zones)

    def read_uj(self) -> list[int]:
        """Raw counters in microjoules; an unreadable counter raises HardwareError naming it."""
        out = []
        for z in self.zones:
            path = z / "energy_uj"
            try:
                out.append(int(path.read_text().strip()))
            except PermissionError:
                raise HardwareError(f"RAPL counter {path} is not readable (root only on Linux >= 5.10): "
                                    f"run as root, 'chmod a+r' it, or use --energy estimate") from None
            except (OSError, ValueError) as exc:
                raise HardwareError(f"RAPL counter {path} cannot be read ({exc}); use --energy estimate") from None
        return out

    def joules_between(self, start: list[int], end: list[int]) -> float:
        """Energy between two readings; a counter that went backwards wrapped at max_energy_range_uj."""
        total = 0
        for z, a, b in zip(self.zones, start, end):
            delta = b - a
            if delta < 0:
                rng = _read_text(z / "max_energy_range_uj")
                if rng is None or not rng.isdigit():
                    raise HardwareError(f"RAPL counter in {z} wrapped and max_energy_range_uj is unreadable; "
                                        f"use --energy estimate")
                delta += int(rng)
            total += delta
        return total / 1e6


class NvmlEnergy:
    """The cumulative NVML energy counter of one GPU (millijoules since the driver loaded)."""

    def __init__(self, index: int = 0) -> None:
        try:
            import pynvml
        except ImportError:
            raise HardwareError("NVML energy asked for, but nvidia-ml-py (pynvml) is not installed; "
                                "pip install nvidia-ml-py or use --energy estimate") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # NVMLError subclasses, including a missing driver library
            raise HardwareError(f"NVML cannot open GPU {index} ({exc}); use --energy estimate") from None
        self.index = index

    def read_mj(self) -> int:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception as exc:  # "Not Supported" before Volta
            raise HardwareError(f"NVML energy counter of GPU {self.index} is unreadable ({exc}); "
                                f"use --energy estimate") from None

    def utilization(self) -> float | None:
        try:
            return self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu / 100.0
        except Exception:
            return None

    def power_limit_w(self) -> float | None:
        try:
            return self._nvml.nvmlDeviceGetEnforcedPowerLimit(self._handle) / 1000.0
        except Exception:
            return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _physical_cores() -> int:
    try:
        import psutil
        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


class EnergyMeter:
    """Measure (or estimate) the energy of the work between :meth:`start` and :meth:`stop`.

    ``device`` decides what is metered: a ``cuda[:N]`` device meters that GPU (NVML), anything
    else the CPU packages (RAPL). ``mode='auto'`` takes the best method available;
    ``tdp_w`` sets the watts used by the estimate.
    """

    def __init__(self, device: str = "cpu", mode: str = "auto", tdp_w: float | None = None,
                 rapl_root: str | os.PathLike = RAPL_ROOT) -> None:
        if mode not in MODES:
            raise HardwareError(f"unknown energy mode '{mode}'; choose one of {', '.join(MODES)}")
        if tdp_w is not None and not tdp_w > 0:
            raise HardwareError(f"--tdp must be a positive number of watts, got {tdp_w}")
        self.device, self.mode, self.tdp_w = device, mode, tdp_w
        self.gpu = device.startswith("cuda")
        self.fallback_note = ""
        self._rapl: RaplReader | None = None
        self._nvml: NvmlEnergy | None = None
        self._nvml_dev: NvmlEnergy | None = None
        if mode in ("auto", "rapl") and not self.gpu:
            self._open_rapl(RaplReader(rapl_root))
        if mode in ("auto", "nvml") and self.gpu:
            self._open_nvml()
        if mode == "rapl" and self.gpu:
            raise HardwareError("--energy rapl meters the CPU; this run is on a GPU: use --energy nvml or auto")
        if mode == "nvml" and not self.gpu:
            raise HardwareError("--energy nvml meters a CUDA GPU; this run is on the CPU: use --energy rapl or auto")

    def _open_rapl(self, reader: RaplReader) -> None:
        if not reader.available():
            if self.mode == "rapl":
                raise HardwareError(f"no RAPL counters under {reader.root}; use --energy estimate")
            self.fallback_note = f"no RAPL counters under {reader.root}"
            return
        try:
            reader.read_uj()
            self._rapl = reader
        except HardwareError as exc:
            if self.mode == "rapl":
                raise
            self.fallback_note = str(exc)

    def _open_nvml(self) -> None:
        index = int(self.device.split(":")[1]) if ":" in self.device else 0
        try:
            self._nvml_dev = NvmlEnergy(index)  # kept for power limit and utilization even without a counter
            self._nvml_dev.read_mj()
            self._nvml = self._nvml_dev
        except HardwareError as exc:
            if self.mode == "nvml":
                raise
            self.fallback_note = str(exc)

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = _process_cpu_seconds()
        self._rapl0 = self._rapl.read_uj() if self._rapl else None
        self._nvml0 = self._nvml.read_mj() if self._nvml else None

    def stop(self) -> EnergyResult:
        seconds = time.perf_counter() - self._t0
        if self.mode == "off":
            return EnergyResult(None, seconds, "none", "energy metering turned off (--energy off)")
        if self._rapl is not None:
            joules = self._rapl.joules_between(self._rapl0 or [], self._rapl.read_uj())
            if joules > 0:
                return EnergyResult(joules, seconds, "measured-rapl",
                                    f"{len(self._rapl.zones)} RAPL package zone(s); whole sockets, all processes")
            self.fallback_note = "RAPL counters did not advance (virtual machine?)"
        if self._nvml is not None:
            joules = (self._nvml.read_mj() - (self._nvml0 or 0)) / 1000.0
            if seconds < NVML_MIN_SECONDS:
                self.fallback_note = (f"{seconds:.3f} s is too short for the NVML energy counter "
                                      f"(needs >= {NVML_MIN_SECONDS} s)")
            elif joules > 0:
                return EnergyResult(joules, seconds, "measured-nvml", f"NVML energy counter of GPU {self._nvml.index}")
            else:
                self.fallback_note = "NVML energy counter did not advance in this interval"
        return self._estimate(seconds)

    def _estimate(self, seconds: float) -> EnergyResult:
        note = f"; {self.fallback_note}" if self.fallback_note else ""
        if self.gpu:
            limit = self._nvml_dev.power_limit_w() if self._nvml_dev else None
            tdp, origin = (self.tdp_w, "--tdp") if self.tdp_w else (limit, "NVML power limit")
            if tdp is None:
                return EnergyResult(None, seconds, "none", f"no GPU energy counter and no TDP: pass --tdp WATTS{note}")
            util = self._nvml_dev.utilization() if self._nvml_dev else None
            util_note = f"NVML utilization {util:.2f} at the end" if util is not None else "assumed fully busy"
            util = 1.0 if util is None else util
        else:
            cores = _physical_cores()
            tdp, origin = (self.tdp_w, "--tdp") if self.tdp_w else (
                DEFAULT_CPU_WATTS_PER_CORE * cores, f"default {DEFAULT_CPU_WATTS_PER_CORE:g} W x {cores} core(s)")
            busy = _process_cpu_seconds() - self._cpu0
            util = min(1.0, busy / max(seconds * (os.cpu_count() or 1), 1e-9))
            util_note = f"process CPU utilization {util:.2f}"
        joules = tdp * util * seconds
        if joules <= 0:
            return EnergyResult(None, seconds, "none", f"estimate is 0 J ({util_note}); not reported{note}")
        return EnergyResult(joules, seconds, "estimate-tdp",
                            f"TDP {tdp:.0f} W ({origin}) x {util_note} x {seconds:.2f} s{note}")
