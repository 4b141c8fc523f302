"""What this machine is: CPU, instruction sets, memory and GPUs (detection only).

``detect()`` gathers everything ``hwlm hw`` prints into a typed :class:`MachineInfo`;
``to_dict()`` is the form stored in every bench record. Measuring what the machine does lives
elsewhere: a device's clock in :mod:`hwlm.device`, training's MFU probe and allocator setting in
:mod:`hwlm.train.runtime`, the benchmarks' probes in :mod:`hwlm.bench.measure`. torch and pynvml
are imported only inside functions, so the planner can import this module without paying for torch.

    >>> info = detect()
    >>> info.device, info.cpu.logical_cores  # doctest: +SKIP
    ('cpu', 2)
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable


__all__ = ["CpuInfo", "GpuInfo", "MachineInfo", "detect", "render", "cpu_features_from_flags", "memory_bytes",
           "detect_cpu", "detect_gpus"]

# Instruction-set features that decide CPU matmul speed: our name -> /proc/cpuinfo flag.
_LINUX_FLAGS = {
    "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512_bf16": "avx512_bf16",
    "avx512_vnni": "avx512_vnni", "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx_tile", "amx_bf16": "amx_bf16", "amx_int8": "amx_int8",
}
# macOS: our name -> sysctl key (Intel Macs use hw.optional.*, Apple silicon hw.optional.arm.FEAT_*).
_MAC_SYSCTL = {
    "avx2": "hw.optional.avx2_0", "fma": "hw.optional.fma", "avx512f": "hw.optional.avx512f",
    "avx512_vnni": "hw.optional.avx512vnni", "neon": "hw.optional.neon",
    "arm_bf16": "hw.optional.arm.FEAT_BF16", "arm_i8mm": "hw.optional.arm.FEAT_I8MM",
    "arm_fp16": "hw.optional.arm.FEAT_FP16",
}


@dataclass
class CpuInfo:
    """The host CPU."""

    model: str
    arch: str
    physical_cores: int | None
    logical_cores: int
    features: dict[str, bool]
    torch_capability: str | None  # torch.backends.cpu.get_cpu_capability(): the kernels torch dispatches to


@dataclass
class GpuInfo:
    """One CUDA GPU as torch and (where present) NVML see it."""

    index: int
    name: str
    memory_bytes: int
    compute_capability: str
    multiprocessors: int | None = None
    driver: str | None = None
    power_w: float | None = None         # NVML instantaneous draw
    power_limit_w: float | None = None   # NVML enforced limit
    energy_j: float | None = None        # NVML cumulative energy counter since driver load
    nvml: str = "not installed"          # "ok", "not installed" or the NVML error


@dataclass
class MachineInfo:
    """Everything ``hwlm hw`` reports."""

    hostname: str
    os: str
    python: str
    torch: str | None
    cpu: CpuInfo
    memory_bytes: int | None
    memory_available_bytes: int | None
    gpus: list[GpuInfo] = field(default_factory=list)
    cuda_runtime: str | None = None
    mps_available: bool = False
    xla: str | None = None                # torch_xla version and device kind where installed
    device: str = "cpu"
    device_reason: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- CPU and memory


def cpu_features_from_flags(flags: set[str]) -> dict[str, bool]:
    """Map a set of /proc/cpuinfo flags to hwlm's feature names.

    >>> cpu_features_from_flags({"avx2", "fma"})["avx2"], cpu_features_from_flags({"avx2"})["amx_bf16"]
    (True, False)
    """
    return {name: flag in flags for name, flag in _LINUX_FLAGS.items()}


def _sysctl(key: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _linux_cpu(text: str) -> tuple[str, set[str], int | None]:
    """Model name, flags and physical core count from /proc/cpuinfo text."""
    model = next(iter(re.findall(r"^model name\s*:\s*(.+)$", text, re.M)), "") or \
        next(iter(re.findall(r"^(?:Hardware|cpu model|Model)\s*:\s*(.+)$", text, re.M)), "")
    flag_lines = re.findall(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.M)
    flags = set(flag_lines[0].split()) if flag_lines else set()
    cores = set()
    for block in text.split("\n\n"):
        phys = re.search(r"^physical id\s*:\s*(\d+)", block, re.M)
        core = re.search(r"^core id\s*:\s*(\d+)", block, re.M)
        if phys and core:
            cores.add((phys.group(1), core.group(1)))
    return model.strip(), flags, (len(cores) or None)


def _torch_cpu_capability() -> str | None:
    try:
        import torch
        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError, RuntimeError):
        return None


def detect_cpu() -> CpuInfo:
    """The CPU model, core counts and math-relevant instruction sets."""
    logical = os.cpu_count() or 1
    model, physical, features = platform.processor() or platform.machine(), None, {}
    if sys.platform.startswith("linux") and Path("/proc/cpuinfo").exists():
        m, flags, physical = _linux_cpu(Path("/proc/cpuinfo").read_text(errors="replace"))
        model = m or model
        features = cpu_features_from_flags(flags)
    elif sys.platform == "darwin":
        model = _sysctl("machdep.cpu.brand_string") or model
        features = {name: _sysctl(key) == "1" for name, key in _MAC_SYSCTL.items()}
        phys = _sysctl("hw.physicalcpu")
        physical = int(phys) if phys and phys.isdigit() else None
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or physical
    except ImportError:
        pass
    return CpuInfo(model=model or "unknown", arch=platform.machine(), physical_cores=physical,
                   logical_cores=logical, features=features, torch_capability=_torch_cpu_capability())


def memory_bytes() -> tuple[int | None, int | None]:
    """Total and available RAM in bytes (psutil, else /proc/meminfo, else sysconf)."""
    try:
        import psutil
        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except ImportError:
        pass
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        vals = dict(re.findall(r"^(\w+):\s+(\d+) kB", meminfo.read_text(), re.M))
        total, avail = vals.get("MemTotal"), vals.get("MemAvailable")
        return (int(total) * 1024 if total else None), (int(avail) * 1024 if avail else None)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None
    except (ValueError, OSError, AttributeError):
        return None, None


# --------------------------------------------------------------------------- GPUs


def _nvml_fill(gpus: list[GpuInfo]) -> None:
    """Add driver, power and energy readings from NVML; every failure is recorded, none raised."""
    try:
        import pynvml
    except ImportError:
        return
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses; a missing driver library is one of them
        for g in gpus:
            g.nvml = f"unavailable: {exc}"
        return
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        for g in gpus:
            g.driver, g.nvml = driver, "ok"
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(g.index)
            except Exception as exc:
                g.nvml = f"no handle: {exc}"
                continue
            g.power_w = _nvml_try(lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0)
            g.power_limit_w = _nvml_try(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
            g.energy_j = _nvml_try(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _nvml_try(fn: Callable[[], float]) -> float | None:
    try:
        return float(fn())
    except Exception:  # not supported on this GPU or driver: leave the field empty
        return None


def detect_gpus() -> tuple[list[GpuInfo], str | None]:
    """CUDA GPUs as torch sees them, plus NVML readings; and the CUDA runtime torch was built with."""
    try:
        import torch
    except ImportError:
        return [], None
    if not torch.cuda.is_available():
        return [], torch.version.cuda
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(GpuInfo(index=i, name=p.name, memory_bytes=int(p.total_memory),
                            compute_capability=f"{p.major}.{p.minor}",
                            multiprocessors=getattr(p, "multi_processor_count", None)))
    _nvml_fill(gpus)
    return gpus, torch.version.cuda


def _xla() -> str | None:
    import importlib.util
    if importlib.util.find_spec("torch_xla") is None:
        return None
    try:
        import torch_xla
        return f"torch_xla {getattr(torch_xla, '__version__', '?')}"
    except Exception as exc:  # torch_xla import can fail in many ways without a TPU runtime
        return f"torch_xla installed but failed to load: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def detect() -> MachineInfo:
    """Describe this machine: CPU, memory, GPUs, MPS/XLA, and the device hwlm would choose."""
    from hwlm.device import select_device

    total, avail = memory_bytes()
    notes: list[str] = []
    try:
        import torch
        torch_version: str | None = torch.__version__
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    except ImportError:
        torch_version, mps = None, False
        notes.append("torch is not installed: GPU detection and matmul measurement are unavailable")
    gpus, cuda_rt = detect_gpus() if torch_version else ([], None)
    device, reason = "cpu", "torch is not installed"
    if torch_version:
        choice = select_device("auto")
        device, reason = choice.device, choice.reason
    if gpus and all(g.nvml == "not installed" for g in gpus):
        notes.append("nvidia-ml-py (pynvml) is not installed: no power or energy readings")
    return MachineInfo(hostname=platform.node(), os=f"{platform.system()} {platform.release()}",
                       python=platform.python_version(), torch=torch_version, cpu=detect_cpu(),
                       memory_bytes=total, memory_available_bytes=avail, gpus=gpus, cuda_runtime=cuda_rt,
                       mps_available=mps, xla=_xla(), device=device, device_reason=reason, notes=notes)


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


def render(info: MachineInfo) -> str:
    """Human-readable summary of :func:`detect`'s result."""
    c = info.cpu
    have = [k for k, v in c.features.items() if v]
    lacks = [k for k, v in c.features.items() if not v]
    lines = [
        f"host      {info.hostname} ({info.os}, Python {info.python}, torch {info.torch or 'not installed'})",
        f"cpu       {c.model} [{c.arch}]",
        f"cores     {c.physical_cores or 'unknown'} physical, {c.logical_cores} logical",
        f"isa       has: {', '.join(have) or 'none detected'}" + (f"; lacks: {', '.join(lacks)}" if lacks else ""),
        f"torch cpu kernels: {c.torch_capability or 'unknown'}",
        f"memory    {_gib(info.memory_bytes)} total, {_gib(info.memory_available_bytes)} available",
    ]
    if info.gpus:
        lines.append(f"cuda      runtime {info.cuda_runtime}, {len(info.gpus)} GPU(s)")
        for g in info.gpus:
            power = "" if g.power_w is None else f", {g.power_w:.0f} W now"
            limit = "" if g.power_limit_w is None else f" of {g.power_limit_w:.0f} W limit"
            energy = "" if g.energy_j is None else f", energy counter {g.energy_j:.0f} J"
            lines.append(f"  gpu {g.index}   {g.name}, {_gib(g.memory_bytes)}, sm {g.compute_capability}, "
                         f"driver {g.driver or 'unknown'}{power}{limit}{energy} (NVML: {g.nvml})")
    else:
        lines.append("cuda      no CUDA GPU visible to torch")
    lines.append(f"mps       {'available' if info.mps_available else 'not available'}")
    lines.append(f"xla       {info.xla or 'not installed'}")
    lines.append(f"device    hwlm will use '{info.device}': {info.device_reason}")
    lines.extend(f"note      {n}" for n in info.notes)
    return "\n".join(lines)
