"""hwlm plan: a torch-free estimator of training and serving time, memory, energy, CO2 and cost.

    >>> from hwlm.plan import estimate_training, estimate_inference  # doctest: +SKIP
    >>> estimate_training("llama-2-7b", tokens=2e12, hardware="a100-80gb", devices=256).time_s  # doctest: +SKIP
    >>> estimate_training(TrainingJob(model="llama-2-7b", tokens=2e12, hardware="a100-80gb", devices=256,
    ...                               framework="nemo")).tokens_per_s                          # doctest: +SKIP

Modules: ``catalog`` (hardware), ``models`` (model shapes), ``parallel`` (layouts, memory,
communication), ``efficiency`` (priors, calibration), ``training``, ``inference``,
``recommend``, ``scaling`` (compute-optimal sizing), ``explain`` (the terms of an estimate),
``machine`` (a device for this machine from measured peaks), ``jobs`` (the questions: a training,
inference and serving job, one dataclass each), ``software`` (frameworks and engines),
``serving`` (continuous batching under load).
"""

from hwlm.plan.catalog import Device, format_device, get_device, list_devices, load_catalog
from hwlm.plan.efficiency import Calibration, load_calibration
from hwlm.plan.explain import Term, format_terms
from hwlm.plan.inference import InferenceEstimate, estimate_inference
from hwlm.plan.jobs import InferenceJob, ServingJob, TrainingJob, resolve_hardware
from hwlm.plan.machine import THIS_MACHINE, device_from_calibration, machine_device
from hwlm.plan.models import Model, get_model, list_models
from hwlm.plan.parallel import Layout, MemoryBreakdown
from hwlm.plan.recommend import Option, Recommendation, recommend
from hwlm.plan.serving import ServingEstimate, estimate_serving
from hwlm.plan.scaling import LAWS, OptimalSize, compute_optimal
from hwlm.plan.software import ENGINES, FRAMEWORKS, Stack
from hwlm.plan.training import TrainingEstimate, estimate_training

__all__ = [
    "Device", "format_device", "get_device", "list_devices", "load_catalog",
    "Calibration", "load_calibration", "Term", "format_terms", "InferenceEstimate", "estimate_inference",
    "Model", "get_model", "list_models", "Layout", "MemoryBreakdown", "Option", "Recommendation", "recommend",
    "LAWS", "OptimalSize", "compute_optimal", "TrainingEstimate", "estimate_training",
    "THIS_MACHINE", "device_from_calibration", "machine_device",
    "TrainingJob", "InferenceJob", "ServingJob", "resolve_hardware", "ENGINES", "FRAMEWORKS", "Stack",
    "ServingEstimate", "estimate_serving",
]
