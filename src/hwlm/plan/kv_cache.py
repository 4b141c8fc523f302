"""What an engine keeps its KV cache in: the bytes per cached element the planner prices, and why.

The cache is not always in the weights' format. In order:

1. **A calibration that records it.** ``hwlm bench calibrate`` writes, beside each entry from ``hwlm bench
   infer``, the engine that ran it and the data type its cache was kept in (``engine``, ``kv_dtype``:
   :mod:`hwlm.calibration`). Where the job's engine is that engine, the planner prices what it measured:
   hwlm's own loop keeps fp32 activations and so an fp32 cache under w8a8 / w8a16 / w4a16 (``bench infer
   --run`` of a compressed run refuses any other ``--precision``), twice the bytes the format's 16 bits
   would give.
2. **hwlm's own engine on this machine** (an older calibration that records neither): the same rules, from
   the code: fp32 under the compressed formats, and for ``hwlm serve`` on a CPU fp32 under bf16 too (its
   packed step keeps k/v in fp32: ``hwlm.serve.engine.model_runner``).
3. **Otherwise (catalog hardware)** the format's rule, :func:`hwlm.formulas.kv_elem_bytes`: fp8 serving in
   fp8, fp32 in fp32, 16-bit and weight-only formats in 16 bits, which is what vLLM and TensorRT-LLM keep
   unless told to quantise the cache (:data:`CATALOG_SOURCE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hwlm.formulas import kv_elem_bytes
from hwlm.plan.catalog import Device
from hwlm.plan.efficiency import load_calibration
from hwlm.plan.software import Stack

__all__ = ["KVDtype", "kv_cache_dtype", "CATALOG_SOURCE", "HWLM_SOURCE"]

# Formats whose activations hwlm keeps in fp32 (the quantized modules take and return fp32).
_FP32_ACTIVATIONS = ("w8a8", "w8a16", "w4a16")
_PHASES = ("decode", "prefill", "decode_rows", "prefill_rows")  # the entries `bench infer` measured

CATALOG_SOURCE = ("vLLM engine arguments: '--kv-cache-dtype ... If \"auto\", will use model data type' (fp8 only "
                  "when asked); TensorRT-LLM quantization guide: the FP8 KV cache is enabled manually "
                  "(KvCacheConfig(dtype='fp8')) or by the checkpoint, else the cache is in the model's dtype")
HWLM_SOURCE = ("hwlm.bench.infer._load_run: a compressed run runs at --precision fp32 (activations and KV cache); "
               "hwlm.serve.engine.model_runner: on a CPU the packed step keeps k/v in fp32")


@dataclass(frozen=True)
class KVDtype:
    """Bytes per cached key/value element, what they are, and where that comes from."""

    bytes: float
    why: str
    source: str


def _recorded(cal: Any, device_id: str, precision: str) -> Any:
    """The first ``bench infer`` entry of ``precision`` on the device that records its engine and KV dtype."""
    for phase in _PHASES:
        e = cal.lookup(device_id, precision, phase)
        if e is not None and e.kv_dtype and e.engine:
            return e
    return None


def kv_cache_dtype(precision: str, engine: Stack, dev: Device, calibration: Any = None,
                   serving: bool = False) -> KVDtype:
    """The KV element bytes ``engine`` keeps at ``precision`` on ``dev`` (``serving``: ``plan serve``'s
    engine loop rather than ``plan infer``'s ``bench infer``); see the module docstring for the order."""
    hwlm_here = engine.id == "hwlm" and dev.vendor == "local"
    if serving and hwlm_here and dev.kind == "cpu" and precision in ("bf16", *_FP32_ACTIVATIONS):
        # serve's own step, not bench infer's: a bf16 calibration records bf16, serve keeps fp32
        return KVDtype(4.0, f"fp32 ({engine.id} serve on a CPU keeps its KV cache in fp32 under {precision})",
                       HWLM_SOURCE)
    cal = load_calibration(calibration)
    e = cal and _recorded(cal, dev.id, precision)
    if e and e.engine == engine.id:
        return KVDtype(kv_elem_bytes(precision, e.kv_dtype), f"{e.kv_dtype} (calibration: {e.engine} kept its KV "
                       f"cache in {e.kv_dtype} at {precision})", e.source)
    if hwlm_here and precision in _FP32_ACTIVATIONS:
        return KVDtype(4.0, f"fp32 ({engine.id} keeps fp32 activations and KV cache under {precision})", HWLM_SOURCE)
    b = kv_elem_bytes(precision)
    what = {1.0: "fp8", 4.0: "fp32"}.get(b, "16-bit")
    if precision in _FP32_ACTIVATIONS:
        return KVDtype(b, f"{what} ({precision}: the model's 16-bit data type, as vLLM and TensorRT-LLM keep the "
                       "cache under weight-only formats unless told fp8)", CATALOG_SOURCE)
    return KVDtype(b, f"{what} (the cache in the serving precision, {precision})", CATALOG_SOURCE)
