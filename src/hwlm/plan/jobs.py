"""The questions the planner answers, one dataclass each: a training job, an inference (one batch) job and
a serving job (traffic). Their fields carry their help text (``hwlm.config.option``), as the stage configs
do; ``hwlm plan`` builds its flags' help from them. Values are checked once, in ``__post_init__``, and the
hardware (a catalog id, a :class:`~hwlm.plan.catalog.Device`, or this machine from a calibration file) is
resolved once, by :func:`resolve_hardware`, inside the estimate.

    >>> job = TrainingJob(model="gpt2", tokens=1e9, hardware="h100-sxm", devices=8)
    >>> job.global_batch is None, job.framework is None
    (True, True)
    >>> TrainingJob(model="gpt2", tokens=1e9, hardware="h100-sxm", global_batch=0)
    Traceback (most recent call last):
    ...
    hwlm.errors.PlanError: --global-batch must be a whole number >= 1 sequences, got 0
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from hwlm.config import option
from hwlm.errors import PlanError
from hwlm.formulas import PRECISIONS
from hwlm.plan.catalog import Device, get_device
from hwlm.plan.efficiency import DEFAULT_GRID_KG_PER_KWH, DEFAULT_PUE

__all__ = ["TrainingJob", "InferenceJob", "ServingJob", "resolve_hardware", "field_help", "TRAIN_PRECISIONS",
           "INFER_PRECISIONS"]

TRAIN_PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")
# The compress stage's precision names, shared through hwlm.formulas: weights x activations. w8a16/w4a16
# are weight-only (dequantised to 16 bits in the kernel), w8a8 runs the 8-bit matrix units.
INFER_PRECISIONS = PRECISIONS
# ``--precision int8|int4`` (what users type, and the compress methods' names) means weight-only int8/int4, the
# format GPU engines serve as "int8"/"int4"; w8a8 (int8 activations too) is always spelt out.
PRECISION_ALIASES = {"int8": "w8a16", "int4": "w4a16"}


def field_help(cls: type, name: str) -> str:
    """The help text of one job field (what ``hwlm plan --help`` shows)."""
    for f in fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


def _whole(name: str, value: Any, lo: int, unit: str = "") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise PlanError(f"--{name.replace('_', '-')} must be a whole number >= {lo}{unit}, got {value!r}")


def _energy_checks(pue: float, grid: float, price: float | None, power: float | None) -> None:
    if pue < 1.0:
        raise PlanError(f"--pue {pue} must be >= 1 (total facility power / IT power)")
    if grid < 0:
        raise PlanError(f"--grid-intensity {grid} must be >= 0 kg CO2 per kWh")
    for name, v in (("price-per-hour", price), ("power-w", power)):
        if v is not None and v <= 0:
            raise PlanError(f"--{name} must be a positive number, got {v!r}")


def missing_figure_notes(dev_id: str, price: float | None, energy: float | None) -> list[str]:
    """The notes for a device whose catalog entry lacks a price or a TDP (one wording for every estimate)."""
    notes = []
    if price is None:
        notes.append(f"{dev_id} has no catalog price; pass --price-per-hour for a cost")
    if energy is None:
        notes.append(f"{dev_id} has no published TDP; pass --power-w for energy and CO2")
    return notes


@dataclass
class TrainingJob:
    """One training run to predict (``hwlm plan train``)."""

    model: Any = option(None, "preset name (see `hwlm plan models`), config.json path, or a plan.Model")
    tokens: float = option(0.0, "training tokens (2e12, 2T)")
    hardware: Any = option(None, "catalog id (see `hwlm plan hardware`), a plan.Device, or this-machine "
                                 "with a calibration file (the default when one is given)")
    devices: int = option(1, "number of devices")
    precision: str = option("bf16", "fp32 | tf32 | bf16 | fp16 | fp8")
    seq_len: int | None = option(None, "context length (default: the model's)")
    global_batch: int | None = option(None, "sequences per optimizer step (default ~4M tokens, capped by the "
                                            "critical batch of the model's size)")
    framework: str | None = option(None, "training stack: megatron | deepspeed | fsdp | torchtitan | maxtext | "
                                         "llm-foundry | nemo | hwlm (default: the usual one for the hardware)")
    tp: int | None = option(None, "tensor-parallel degree (default: chosen)")
    pp: int | None = option(None, "pipeline-parallel degree (default: chosen)")
    ep: int | None = option(None, "expert-parallel degree for mixture-of-experts models (default: chosen)")
    capacity_factor: float | None = option(None, "MoE with token dropping: each expert computes capacity_factor x "
                                                 "its even share of the tokens (default: dropless, 1)")
    zero_stage: int | None = option(None, "ZeRO stage, 3 = FSDP (default: chosen)")
    recompute: str | None = option(None, "activation recompute: none | selective | full (default: chosen)")
    micro_batch: int | None = option(None, "sequences per device per micro-step (default: the largest that "
                                           "fits and is no slower)")
    virtual_stages: int | None = option(None, "model chunks per pipeline stage (interleaved 1F1B)")
    schedule: str | None = option(None, "pipeline schedule: 1f1b | interleaved (default: chosen)")
    layout: Any = option(None, "a fixed plan.Layout (Python only)", cli=False)
    calibration: Any = option(None, "calibration JSON from `hwlm bench calibrate` (replaces the priors)")
    pue: float = option(DEFAULT_PUE, "data-centre PUE")
    grid_intensity: float = option(DEFAULT_GRID_KG_PER_KWH, "kg CO2 per kWh (default world average)")
    price_per_hour: float | None = option(None, "USD per device-hour (default: catalog)")
    power_w: float | None = option(None, "watts per device (default: catalog TDP)")
    find_smallest: bool = option(True, "search the smallest device count that fits when this one does not",
                                 cli=False)
    autocast: bool = option(False, "fp32 weights under torch.autocast (hwlm's own loop)", cli=False)

    def __post_init__(self) -> None:
        if self.model is None or self.model == "":
            raise PlanError("a training job needs --model (a preset name or a config.json path)")
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, (int, float)) or not self.tokens > 0:
            raise PlanError(f"--tokens must be a positive number of training tokens, got {self.tokens!r}")
        _whole("devices", self.devices, 1)
        _whole("global_batch", self.global_batch, 1, " sequences")
        for name in ("seq_len", "tp", "pp", "ep", "micro_batch", "virtual_stages"):
            _whole(name, getattr(self, name), 1)
        if self.precision not in TRAIN_PRECISIONS:
            raise PlanError(f"training precision {self.precision!r} is not supported; choose one of "
                            f"{', '.join(TRAIN_PRECISIONS)}")
        cf = self.capacity_factor
        if cf is not None and (isinstance(cf, bool) or not isinstance(cf, (int, float)) or not cf >= 1):
            raise PlanError(f"--capacity-factor must be a number >= 1 (1: each expert gets exactly its share), "
                            f"got {cf!r}")
        if self.zero_stage not in (None, 0, 1, 2, 3):
            raise PlanError(f"--zero-stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if self.recompute not in (None, "none", "selective", "full", "partial"):
            raise PlanError(f"--recompute {self.recompute!r} is not known; choose none, selective or full")
        _energy_checks(self.pue, self.grid_intensity, self.price_per_hour, self.power_w)


@dataclass
class InferenceJob:
    """Serving one batch of equal requests (``hwlm plan infer``): the latency of one batch."""

    model: Any = option(None, "preset name (see `hwlm plan models`), config.json path, or a plan.Model")
    hardware: Any = option(None, "catalog id, a plan.Device, or this-machine with a calibration file")
    devices: int = option(1, "number of devices (devices / tp replicas)")
    batch: int = option(1, "concurrent sequences per replica")
    prompt_len: int = option(512, "prompt tokens")
    gen_len: int = option(256, "generated tokens")
    precision: str = option("bf16", "fp32 | bf16 | fp16 | fp8 | w8a8 | w8a16 | w4a16 (weights x activations, "
                                     "the compress stage's names; int8 = w8a16, int4 = w4a16)")
    tp: int | None = option(None, "tensor-parallel degree (default: all devices, or devices / ep)")
    ep: int | None = option(None, "expert-parallel degree (MoE): the routed experts spread over ep groups of tp "
                                  "devices, attention data-parallel over the groups (default 1)")
    engine: str | None = option(None, "serving engine: vllm | tensorrt-llm | tensorrt-llm-0.7 | gpt-fast | llama.cpp "
                                      "| optimum-habana | hf | hwlm (default: hwlm, eager PyTorch, as `hwlm bench "
                                      "infer` runs)")
    cuda_graphs: bool | None = option(None, "override the engine's use of CUDA graphs (the engine decides "
                                            "by default)")
    allow_beyond_context: bool = option(False, "allow prompt + generation past the model's context window "
                                               "(the estimate then extrapolates)")
    calibration: Any = option(None, "calibration JSON from `hwlm bench calibrate` (replaces the priors)")
    pue: float = option(DEFAULT_PUE, "data-centre PUE")
    grid_intensity: float = option(DEFAULT_GRID_KG_PER_KWH, "kg CO2 per kWh (default world average)")
    price_per_hour: float | None = option(None, "USD per device-hour (default: catalog)")
    power_w: float | None = option(None, "watts per device (default: catalog TDP)")

    def __post_init__(self) -> None:
        if self.model is None or self.model == "":
            raise PlanError("an inference job needs --model (a preset name or a config.json path)")
        self.precision = PRECISION_ALIASES.get(self.precision, self.precision)
        if self.precision not in INFER_PRECISIONS:
            raise PlanError(f"inference precision {self.precision!r} is not supported; choose one of "
                            f"{', '.join(INFER_PRECISIONS)}")
        for name, lo in (("devices", 1), ("batch", 1), ("prompt_len", 1), ("gen_len", 1), ("tp", 1), ("ep", 1)):
            _whole(name, getattr(self, name), lo)
        _energy_checks(self.pue, self.grid_intensity, self.price_per_hour, self.power_w)


@dataclass
class ServingJob:
    """Serving a stream of requests (``hwlm plan serve``): continuous batching under a load."""

    model: Any = option(None, "preset name, config.json path, or a plan.Model")
    hardware: Any = option(None, "catalog id, a plan.Device, or this-machine with a calibration file")
    devices: int = option(1, "devices per replica (tp x ep)")
    ep: int | None = option(None, "expert-parallel degree (MoE): routed experts over ep groups of devices / ep, "
                                  "attention data-parallel over the groups (default 1)")
    concurrency: int | None = option(None, "requests in flight at all times (closed loop); or give --rate")
    rate: float | None = option(None, "requests per second arriving (Poisson, open loop); or give --concurrency")
    prompt_len: int = option(512, "prompt tokens per request")
    gen_len: int = option(256, "generated tokens per request")
    precision: str = option("bf16", "fp32 | bf16 | fp16 | fp8 | w8a8 | w8a16 | w4a16 (int8 = w8a16, int4 = w4a16)")
    engine: str | None = option(None, "vllm | tensorrt-llm | tensorrt-llm-0.7 | gpt-fast | llama.cpp | optimum-habana "
                                      "| hf | hwlm "
                                      "(default: vllm on GPUs, the vendor's engine elsewhere)")
    cuda_graphs: bool | None = option(None, "override the engine's use of CUDA graphs", cli=False)
    max_batch: int | None = option(None, "the engine's cap on running sequences (default: the engine's, e.g. "
                                         "vLLM max_num_seqs 256)")
    slo_ttft: float | None = option(None, "time-to-first-token objective at p90, seconds")
    slo_itl: float | None = option(None, "inter-token-latency objective at p90, seconds")
    requests: int = option(2000, "simulated requests (more: steadier percentiles, slower)", cli=False)
    seed: int = option(0, "seed of the simulated arrivals", cli=False)
    allow_beyond_context: bool = option(False, "allow prompt + generation past the model's context window")
    calibration: Any = option(None, "calibration JSON from `hwlm bench calibrate` (replaces the priors)")
    pue: float = option(DEFAULT_PUE, "data-centre PUE")
    grid_intensity: float = option(DEFAULT_GRID_KG_PER_KWH, "kg CO2 per kWh (default world average)")
    price_per_hour: float | None = option(None, "USD per device-hour (default: catalog)")
    power_w: float | None = option(None, "watts per device (default: catalog TDP)")

    def __post_init__(self) -> None:
        if self.model is None or self.model == "":
            raise PlanError("a serving job needs --model (a preset name or a config.json path)")
        self.precision = PRECISION_ALIASES.get(self.precision, self.precision)
        _energy_checks(self.pue, self.grid_intensity, self.price_per_hour, self.power_w)
        if (self.concurrency is None) == (self.rate is None):
            raise PlanError("give exactly one of --concurrency C (requests in flight) or --rate R (requests/s)")
        _whole("concurrency", self.concurrency, 1)
        if self.rate is not None and (isinstance(self.rate, bool) or not self.rate > 0):
            raise PlanError(f"--rate must be a positive number of requests per second, got {self.rate!r}")
        for name, lo in (("devices", 1), ("prompt_len", 1), ("gen_len", 1), ("max_batch", 1), ("requests", 10),
                         ("ep", 1)):
            _whole(name, getattr(self, name), lo)
        if self.precision not in INFER_PRECISIONS:
            raise PlanError(f"inference precision {self.precision!r} is not supported; choose one of "
                            f"{', '.join(INFER_PRECISIONS)}")
        for name in ("slo_ttft", "slo_itl"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise PlanError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {v!r}")


def resolve_hardware(hardware: Any, calibration: Any = None) -> Device:
    """The one place a job's hardware becomes a :class:`Device`: a Device as is, a catalog id, or (None,
    ``this-machine``) this machine's device built from the calibration file's measured peaks."""
    from hwlm.plan.machine import device_from_calibration, is_this_machine

    if isinstance(hardware, Device):
        return hardware
    if hardware is not None and not isinstance(hardware, str):
        raise PlanError(f"hardware {hardware!r} is neither a catalog id nor a plan.Device")
    if not is_this_machine(hardware):
        return get_device(hardware)
    if calibration is None:
        raise PlanError("--hardware is required (a catalog id, see `hwlm plan hardware`), unless --calibration FILE "
                        "from `hwlm bench calibrate --hardware this-machine` describes this machine")
    return device_from_calibration(calibration)
