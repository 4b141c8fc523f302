"""The hardware catalog: datasheet figures of CPUs, GPUs, TPUs and other accelerators, each with its source.

The planner never guesses a peak: every number it uses comes from a record here, and every
record names the document it was taken from. The data lives in TOML files beside this module
(``plan/catalog/*.toml``, one per vendor); users add or correct parts with their own files,
named by the ``HWLM_CATALOG`` environment variable (paths separated by ``os.pathsep``; a
folder means every ``*.toml`` in it) or passed as ``extra_paths``.

File format (all numbers in base SI units: bytes, bytes/s, FLOP/s, watts, USD)::

    [[device]]
    id = "h100-sxm"                  # lower-case, dash-separated, unique
    name = "NVIDIA H100 SXM5 80GB"
    vendor = "nvidia"
    kind = "gpu"                     # cpu | gpu | tpu | accelerator | fpga | asic
    aliases = ["h100"]               # optional extra lookup names
    memory_bytes = 80e9              # device memory capacity
    memory_bw = 3.35e12              # device memory bandwidth, bytes/s
    intra_node_bw = 450e9            # optional: per device, per direction, to peers in its node (NVLink, ICI)
    inter_node_bw = 50e9             # optional: per device, per direction, across nodes (its NIC share)
    devices_per_node = 8             # typical devices in one node / host
    scale_up_devices = 8             # optional: devices reachable at intra_node_bw (NVL72: 72, TPU pod: 256)
    topology = "switch"              # optional: switch | mesh | torus-2d | torus-3d | ring | pcie (how peers connect)
    matrix_unit = 128                # optional: side of the systolic matrix unit (TPU MXU); shapes are padded to it
    tdp_w = 700                      # optional (not all vendors publish it): board / module power
    idle_w = 70                      # optional
    price_per_hour = 2.99            # optional: typical cloud price per device-hour, USD
    release = 2022                   # optional
    notes = "..."                    # optional
    override = false                 # user files only: true to replace a built-in device of the same id
    [device.flops]                   # DENSE peak FLOP/s (or OP/s for ints) per data type it supports
    fp32 = 67e12
    bf16 = 989.4e12
    [device.achievable]              # optional: the vendor's MEASURED max dense-GEMM FLOP/s per dtype (clocks under
    bf16 = 708e12                    #   load, software efficiency); compute-bound terms scale it instead of the peak
    no_balance_penalty = ["fp8"]     # optional: dtypes whose MEASURED GEMM utilisation shows no loss at this part's
                                     #   ridge point, so the GPU-fitted balance penalty (ridge_exponent) is not applied
    [device.sources]                 # a source for EVERY figure above: document and date
    flops = "NVIDIA H100 Tensor Core GPU datasheet (nvidia.com), 2023"   # covers every dtype ...
    fp8 = "..."                      # ... unless a dtype has its own key
    memory = "..."                   # covers memory_bytes and memory_bw (or give each its own key)
    interconnect = "..."             # covers intra_node_bw, inter_node_bw, devices_per_node, scale_up_devices
    power = "..."                    # covers tdp_w and idle_w
    price = "AWS p5 on-demand price list, 2025-06"

Loading validates everything (required keys, positive numbers in sane units, a source for every
figure, unique ids) and raises :class:`~hwlm.errors.ConfigError` with one line naming the file,
the device and the key. Lookups are forgiving (``get_device("NVIDIA H100")`` finds ``h100-sxm``)
and an unknown name raises :class:`~hwlm.errors.PlanError` listing the closest known ids.

    >>> dev = get_device("h100")
    >>> dev.id, dev.peak_flops("bf16") / 1e12
    ('h100-sxm', 989.4)
"""

from __future__ import annotations

import difflib
import os
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from hwlm.errors import ConfigError, PlanError

__all__ = ["Device", "Catalog", "DTYPES", "KINDS", "TOPOLOGIES", "load_catalog", "get_device", "list_devices",
           "format_device", "normalize_id", "normalize_dtype"]

CATALOG_DIR = Path(__file__).with_name("catalog")
ENV_VAR = "HWLM_CATALOG"

KINDS = ("cpu", "gpu", "tpu", "accelerator", "fpga", "asic")
# How the devices of a scale-up domain connect (hwlm.plan.collectives costs a collective on each).
TOPOLOGIES = ("switch", "mesh", "torus-2d", "torus-3d", "ring", "pcie")
# Widest first, so listings read naturally.
DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "fp4", "int8", "int4")
_DTYPE_ALIASES = {"float64": "fp64", "double": "fp64", "float32": "fp32", "float": "fp32",
                  "tensorfloat32": "tf32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
                  "float8": "fp8", "e4m3": "fp8", "e5m2": "fp8", "nvfp4": "fp4", "mxfp4": "fp4"}
_VENDOR_PREFIXES = ("nvidia-", "amd-", "google-", "intel-", "aws-", "amazon-", "apple-", "cloud-")

# Sane ranges catch unit slips (80 for 80 GB, 3.35 for 3.35 TB/s) with a message saying so.
_RANGES: dict[str, tuple[float, float, str]] = {
    "flops": (1e9, 1e18, "FLOP/s (write 989.4e12, not 989.4)"),
    "memory_bytes": (1e6, 1e14, "bytes (write 80e9 for 80 GB)"),
    "memory_bw": (1e9, 1e17, "bytes/s (write 3.35e12 for 3.35 TB/s)"),
    "intra_node_bw": (1e8, 1e14, "bytes/s per direction (write 450e9 for 450 GB/s)"),
    "inter_node_bw": (1e8, 1e13, "bytes/s per direction (write 50e9 for a 400 Gb/s NIC)"),
    "tdp_w": (1.0, 1e5, "watts"),
    "idle_w": (0.1, 1e5, "watts"),
    "price_per_hour": (0.001, 1e4, "USD per device-hour"),
}
# Which keys of [device.sources] may vouch for a figure: its own key first, then its group.
_SOURCE_GROUPS = {
    "memory_bytes": "memory", "memory_bw": "memory",
    "intra_node_bw": "interconnect", "inter_node_bw": "interconnect",
    "devices_per_node": "interconnect", "scale_up_devices": "interconnect", "topology": "interconnect",
    "matrix_unit": "flops",
    "tdp_w": "power", "idle_w": "power", "price_per_hour": "price",
}
_KNOWN_KEYS = {"id", "name", "vendor", "kind", "aliases", "memory_bytes", "memory_bw", "intra_node_bw",
               "inter_node_bw", "devices_per_node", "scale_up_devices", "tdp_w", "idle_w",
               "price_per_hour", "release", "notes", "override", "flops", "sources", "topology",
               "matrix_unit", "achievable", "no_balance_penalty"}
_REQUIRED = ("id", "name", "vendor", "kind", "memory_bytes", "memory_bw", "devices_per_node", "flops",
             "sources")


def normalize_id(name: str) -> str:
    """Forgiving form of a device name: lower-case, dashes for spaces/underscores, vendor prefix dropped."""
    n = "-".join(name.strip().lower().replace("_", " ").replace("-", " ").split())
    for prefix in _VENDOR_PREFIXES:
        if n.startswith(prefix) and len(n) > len(prefix):
            n = n[len(prefix):]
    return n


def normalize_dtype(dtype: str) -> str:
    """``bfloat16`` -> ``bf16``, ``torch.float16`` -> ``fp16``; unknown names come back lower-cased."""
    d = dtype.strip().lower().removeprefix("torch.")
    return _DTYPE_ALIASES.get(d, d)


@dataclass(frozen=True)
class Device:
    """One catalog entry. Bandwidths are bytes/s per direction; FLOP/s are dense peaks."""

    id: str
    name: str
    vendor: str
    kind: str
    flops: Mapping[str, float]
    memory_bytes: float
    memory_bw: float
    devices_per_node: int
    sources: Mapping[str, str]
    tdp_w: float | None = None            # None where the vendor publishes none (TPU v5e, Trainium)
    intra_node_bw: float | None = None
    inter_node_bw: float | None = None
    scale_up_devices: int = 1
    topology: str = "switch"              # how scale-up peers connect (TOPOLOGIES)
    matrix_unit: int | None = None        # systolic array side (TPU MXU: 128 or 256); None: no shape padding modelled
    achievable: Mapping[str, float] = field(default_factory=dict)  # vendor-measured max dense GEMM FLOP/s by dtype
    no_balance_penalty: tuple[str, ...] = ()  # dtypes measured at full GEMM utilisation despite a high ridge point
    idle_w: float | None = None
    price_per_hour: float | None = None
    release: int | None = None
    notes: str = ""
    aliases: tuple[str, ...] = ()
    path: str = field(default="", compare=False)

    @property
    def dtypes(self) -> tuple[str, ...]:
        """Data types with a published peak, widest first."""
        return tuple(d for d in DTYPES if d in self.flops)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype`` (``bf16``, ``bfloat16``, ``fp8``, ...)."""
        d = normalize_dtype(dtype)
        if d not in self.flops:
            raise PlanError(f"{self.id} has no published peak for dtype '{dtype}'; "
                            f"it has: {', '.join(self.dtypes)}")
        return self.flops[d]

    def achievable_flops(self, dtype: str) -> float | None:
        """The vendor's measured maximum dense-GEMM rate for ``dtype`` (``[device.achievable]``), or None."""
        return self.achievable.get(normalize_dtype(dtype))

    def balance_penalty(self, dtype: str) -> bool:
        """Whether the GPU-fitted balance penalty applies to ``dtype`` (not where ``no_balance_penalty`` lists it:
        a published measurement shows the part's GEMMs keep their utilisation at its ridge point)."""
        return normalize_dtype(dtype) not in self.no_balance_penalty

    def source(self, figure: str) -> str:
        """The document a figure was taken from: ``source('bf16')``, ``source('memory_bw')``."""
        d = normalize_dtype(figure)
        if d in self.flops:
            return self.sources.get(d) or self.sources["flops"]
        if figure in self.sources:
            return self.sources[figure]
        group = _SOURCE_GROUPS.get(figure)
        if group and group in self.sources:
            return self.sources[group]
        raise PlanError(f"{self.id} has no figure '{figure}'")


class Catalog:
    """An ordered, validated set of devices with forgiving lookup."""

    def __init__(self, devices: Sequence[Device]) -> None:
        self._devices: dict[str, Device] = {}
        for dev in devices:
            self._devices[dev.id] = dev
        self._aliases: dict[str, str] = {}
        for dev in self._devices.values():
            for alias in dev.aliases:
                self._aliases[normalize_id(alias)] = dev.id

    def __len__(self) -> int:
        return len(self._devices)

    def __iter__(self) -> Iterator[Device]:
        return iter(self._devices.values())

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except PlanError:
            return False
        return True

    def ids(self) -> list[str]:
        return list(self._devices)

    def devices(self, kind: str | None = None) -> list[Device]:
        if kind is None:
            return list(self._devices.values())
        k = kind.strip().lower()
        if k not in KINDS:
            raise PlanError(f"unknown device kind '{kind}'; choose one of: {', '.join(KINDS)}")
        return [d for d in self._devices.values() if d.kind == k]

    def get(self, name: str) -> Device:
        """Exact id, alias, then a unique id prefix; otherwise PlanError with the closest ids."""
        n = normalize_id(name)
        if n in self._devices:
            return self._devices[n]
        if n in self._aliases:
            return self._devices[self._aliases[n]]
        prefixed = [i for i in self._devices if i.startswith(n)] if n else []
        if len(prefixed) == 1:
            return self._devices[prefixed[0]]
        if len(prefixed) > 1:
            raise PlanError(f"hardware '{name}' is ambiguous: it matches {', '.join(prefixed)}; "
                            f"name one of them")
        names = list(self._devices) + list(self._aliases)
        close = difflib.get_close_matches(n, names, n=5, cutoff=0.5)
        close_ids = list(dict.fromkeys(self._aliases.get(c, c) for c in close))
        hint = (f"closest: {', '.join(close_ids)}" if close_ids
                else "run `hwlm plan hardware` to list known ids")
        raise PlanError(f"unknown hardware '{name}'; {hint} (or add it with a file in ${ENV_VAR})")


# --- loading and validation -------------------------------------------------------------------

def _fail(path: Path, dev_id: str | None, msg: str) -> ConfigError:
    where = f"catalog file {path}" + (f": device '{dev_id}'" if dev_id else "")
    return ConfigError(f"{where}: {msg}")


def _number(path: Path, dev_id: str, key: str, value: Any, range_key: str | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, dev_id, f"key '{key}' must be a number, got {value!r}")
    lo, hi, unit = _RANGES[range_key or key]
    if not value > 0:
        raise _fail(path, dev_id, f"key '{key}' must be positive, got {value!r}")
    if not lo <= value <= hi:
        raise _fail(path, dev_id, f"key '{key}' = {value!r} is outside {lo:g}..{hi:g}; units are {unit}")
    return float(value)


def _count(path: Path, dev_id: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise _fail(path, dev_id, f"key '{key}' must be a whole number of devices >= 1, got {value!r}")
    return value


def _text(path: Path, dev_id: str | None, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, dev_id, f"key '{key}' must be a non-empty string, got {value!r}")
    return value.strip()


def _check_sources(path: Path, dev_id: str, sources: Any, figures: list[str], dtypes: list[str]) -> dict:
    if not isinstance(sources, dict):
        raise _fail(path, dev_id, "[device.sources] must be a table of figure = \"document, date\"")
    out = {k: _text(path, dev_id, f"sources.{k}", v) for k, v in sources.items()}
    for d in dtypes:
        if d not in out and "flops" not in out:
            raise _fail(path, dev_id, f"figure 'flops.{d}' has no source; add sources.{d} or sources.flops")
    for f in figures:
        group = _SOURCE_GROUPS.get(f)
        if f not in out and (group is None or group not in out):
            alt = f" or sources.{group}" if group else ""
            raise _fail(path, dev_id, f"figure '{f}' has no source; add sources.{f}{alt}")
    return out


def _parse_flops(path: Path, dev_id: str, table: Any) -> dict[str, float]:
    if not isinstance(table, dict) or not table:
        raise _fail(path, dev_id, "[device.flops] must list at least one dtype, e.g. fp32 = 19.5e12")
    out = {}
    for dtype, value in table.items():
        if dtype not in DTYPES:
            raise _fail(path, dev_id, f"unknown dtype 'flops.{dtype}'; use one of: {', '.join(DTYPES)}")
        out[dtype] = _number(path, dev_id, f"flops.{dtype}", value, "flops")
    return out


def _parse_device(path: Path, raw: Any, index: int) -> tuple[Device, bool]:
    """Validate one [[device]] table; returns the device and its ``override`` flag."""
    if not isinstance(raw, dict):
        raise _fail(path, None, f"device #{index + 1} is not a table")
    dev_id = raw.get("id") if isinstance(raw.get("id"), str) else f"#{index + 1}"
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise _fail(path, dev_id, f"missing required key(s): {', '.join(missing)}")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise _fail(path, dev_id, f"unknown key(s): {', '.join(unknown)}; "
                                  f"known: {', '.join(sorted(_KNOWN_KEYS))}")
    ident = _text(path, dev_id, "id", raw["id"])
    if normalize_id(ident) != ident:
        raise _fail(path, dev_id, f"id must be lower-case and dash-separated, e.g. '{normalize_id(ident)}'")
    kind = _text(path, ident, "kind", raw["kind"])
    if kind not in KINDS:
        raise _fail(path, ident, f"kind '{kind}' is not one of: {', '.join(KINDS)}")
    flops = _parse_flops(path, ident, raw["flops"])
    achievable = _parse_flops(path, ident, raw["achievable"]) if "achievable" in raw else {}
    for d, v in achievable.items():
        if d not in flops or v > flops[d]:
            raise _fail(path, ident, f"achievable.{d} = {v:g} needs a peak flops.{d} at least as large")
    exempt = raw.get("no_balance_penalty", [])
    if not isinstance(exempt, list) or any(d not in flops for d in exempt):
        raise _fail(path, ident, f"key 'no_balance_penalty' must list dtypes with a peak in [device.flops] "
                                 f"({', '.join(flops)}), got {exempt!r}")
    nums = {k: _number(path, ident, k, raw[k]) for k in _RANGES if k != "flops" and k in raw}
    per_node = _count(path, ident, "devices_per_node", raw["devices_per_node"])
    scale_up = _count(path, ident, "scale_up_devices", raw.get("scale_up_devices", per_node))
    figures = [k for k in nums] + ["devices_per_node"] + (["scale_up_devices"] if "scale_up_devices" in raw else []) \
        + [k for k in ("topology", "matrix_unit", "achievable", "no_balance_penalty") if k in raw]
    unit = raw.get("matrix_unit")
    if unit is not None and (isinstance(unit, bool) or not isinstance(unit, int) or not 8 <= unit <= 1024):
        raise _fail(path, ident, f"key 'matrix_unit' must be the systolic array's side, 8..1024, got {unit!r}")
    topology = _text(path, ident, "topology", raw.get("topology", "switch"))
    if topology not in TOPOLOGIES:
        raise _fail(path, ident, f"topology '{topology}' is not one of: {', '.join(TOPOLOGIES)}")
    sources = _check_sources(path, ident, raw["sources"], figures, list(flops))
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise _fail(path, ident, "key 'aliases' must be a list of names")
    release = raw.get("release")
    if release is not None and (isinstance(release, bool) or not isinstance(release, int)
                                or not 1990 <= release <= 2100):
        raise _fail(path, ident, f"key 'release' must be a year, got {release!r}")
    override = raw.get("override", False)
    if not isinstance(override, bool):
        raise _fail(path, ident, f"key 'override' must be true or false, got {override!r}")
    notes = raw.get("notes", "")
    if not isinstance(notes, str):
        raise _fail(path, ident, "key 'notes' must be a string")
    dev = Device(
        id=ident, name=_text(path, ident, "name", raw["name"]), vendor=_text(path, ident, "vendor", raw["vendor"]),
        kind=kind, flops=types.MappingProxyType(flops), memory_bytes=nums["memory_bytes"],
        memory_bw=nums["memory_bw"], devices_per_node=per_node, tdp_w=nums.get("tdp_w"),
        sources=types.MappingProxyType(sources), intra_node_bw=nums.get("intra_node_bw"),
        inter_node_bw=nums.get("inter_node_bw"), scale_up_devices=scale_up, topology=topology, matrix_unit=unit,
        achievable=types.MappingProxyType(achievable), no_balance_penalty=tuple(exempt), idle_w=nums.get("idle_w"),
        price_per_hour=nums.get("price_per_hour"), release=release, notes=notes.strip(),
        aliases=tuple(a for a in dict.fromkeys(normalize_id(a) for a in aliases) if a != ident), path=str(path))
    return dev, override


def _read_file(path: Path) -> list[tuple[Device, bool]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"catalog file {path} does not exist; fix the path in ${ENV_VAR} or extra_paths") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"catalog file {path} cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"catalog file {path}: not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"device"})
    if extra:
        raise ConfigError(f"catalog file {path}: unknown top-level key(s) {', '.join(extra)}; "
                          f"write each part as a [[device]] table")
    devices = data.get("device")
    if not isinstance(devices, list) or not devices:
        raise ConfigError(f"catalog file {path}: no [[device]] tables found")
    return [_parse_device(path, raw, i) for i, raw in enumerate(devices)]


def _expand(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named directly, and every *.toml inside named folders (sorted)."""
    out: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            out.extend(sorted(path.glob("*.toml")))
        else:
            out.append(path)
    return out


def _merge(builtin: list[Path], user: list[Path]) -> Catalog:
    devices: dict[str, Device] = {}
    for path in builtin + user:
        is_user = path in user
        for dev, override in _read_file(path):
            old = devices.get(dev.id)
            if old is not None and not (is_user and override):
                hint = "; set override = true in the user file to replace it" if is_user else ""
                raise ConfigError(f"catalog file {path}: device id '{dev.id}' is already defined "
                                  f"in {old.path}{hint}")
            devices[dev.id] = dev
    cat = Catalog(list(devices.values()))
    for alias, target in cat._aliases.items():
        if alias in devices and alias != target:
            raise ConfigError(f"catalog file {devices[target].path}: alias '{alias}' of '{target}' "
                              f"shadows the device id '{alias}'")
    return cat


_CACHE: dict[tuple, Catalog] = {}


def _stamp(paths: list[Path]) -> tuple:
    """Cache key: a file edited on disk invalidates the cached catalog."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), None, None))
    return tuple(out)


def load_catalog(extra_paths: Sequence[str | os.PathLike] = ()) -> Catalog:
    """The built-in catalog plus files from ``$HWLM_CATALOG`` and ``extra_paths`` (cached)."""
    env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    builtin = sorted(CATALOG_DIR.glob("*.toml"))
    user = _expand([*env, *extra_paths])
    key = _stamp(builtin) + ("|",) + _stamp(user)
    cat = _CACHE.get(key)
    if cat is None:
        cat = _merge(builtin, user)
        _CACHE.clear()  # one live catalog is enough; avoids growth when files change
        _CACHE[key] = cat
    return cat


def get_device(name: str, catalog: Catalog | None = None) -> Device:
    """Forgiving lookup: ``get_device("H100")``, ``get_device("tpu_v5e")``, ``get_device("A100 80GB")``."""
    return (catalog or load_catalog()).get(name)


def list_devices(kind: str | None = None, catalog: Catalog | None = None) -> list[Device]:
    """Every device, in catalog order, optionally of one kind (``gpu``, ``tpu``, ...)."""
    return (catalog or load_catalog()).devices(kind)


# --- display ----------------------------------------------------------------------------------

def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.4g} {prefix}{unit}"
    return f"{value:.4g} {unit}"


def format_device(dev: Device) -> str:
    """A readable multi-line description of a device; each figure points to its numbered source."""
    notes: list[str] = []

    def ref(figure: str) -> str:
        src = dev.source(figure)
        if src not in notes:
            notes.append(src)
        return f"[{notes.index(src) + 1}]"

    lines = [f"{dev.id}: {dev.name}  ({dev.vendor} {dev.kind}"
             + (f", {dev.release}" if dev.release else "") + ")"]
    if dev.aliases:
        lines.append(f"  aliases: {', '.join(dev.aliases)}")
    lines.append("  dense peak:")
    for d in dev.dtypes:
        unit = "OP/s" if d.startswith("int") else "FLOP/s"
        lines.append(f"    {d:<5} {_si(dev.flops[d], unit):>14}  {ref(d)}")
    if dev.achievable:
        lines.append("  measured max dense GEMM (what the planner scales):")
        for d in (x for x in DTYPES if x in dev.achievable):
            lines.append(f"    {d:<5} {_si(dev.achievable[d], 'FLOP/s'):>14}  {ref('achievable')}")
    if dev.no_balance_penalty:
        lines.append(f"  no balance penalty (measured GEMM utilisation): {', '.join(dev.no_balance_penalty)}  "
                     f"{ref('no_balance_penalty')}")
    rows: list[tuple[str, str, str]] = [
        ("memory", _si(dev.memory_bytes, "B"), "memory_bytes"),
        ("memory bandwidth", _si(dev.memory_bw, "B/s"), "memory_bw")]
    if dev.intra_node_bw is not None:
        rows.append(("in-node link", _si(dev.intra_node_bw, "B/s") + " per direction", "intra_node_bw"))
    if dev.inter_node_bw is not None:
        rows.append(("network", _si(dev.inter_node_bw, "B/s") + " per direction", "inter_node_bw"))
    if dev.topology != "switch" or "topology" in dev.sources:
        rows.append(("topology", dev.topology, "topology"))
    if dev.matrix_unit:
        rows.append(("matrix unit", f"{dev.matrix_unit} x {dev.matrix_unit}", "matrix_unit"))
    rows.append(("devices per node", str(dev.devices_per_node), "devices_per_node"))
    if dev.scale_up_devices != dev.devices_per_node:
        rows.append(("scale-up domain", f"{dev.scale_up_devices} devices", "scale_up_devices"))
    if dev.tdp_w is not None:
        rows.append(("power (TDP)", f"{dev.tdp_w:g} W", "tdp_w"))
    if dev.idle_w is not None:
        rows.append(("idle power", f"{dev.idle_w:g} W", "idle_w"))
    if dev.price_per_hour is not None:
        rows.append(("price", f"${dev.price_per_hour:.2f} per device-hour", "price_per_hour"))
    for label, value, figure in rows:
        lines.append(f"  {label:<17} {value:<28} {ref(figure)}")
    if dev.notes:
        lines.append(f"  notes: {dev.notes}")
    lines.append("  sources:")
    lines.extend(f"    [{i}] {src}" for i, src in enumerate(notes, 1))
    return "\n".join(lines)
