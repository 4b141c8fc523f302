"""The one exception tree of hwlm.

Every error a user can cause is a subclass of :class:`HwlmError`; the CLI catches
that base class in one place, prints its message on one line and exits 1.
Messages name the bad value and what to do about it.

    HwlmError
     ├── ConfigError      unknown keys, impossible values, bad recipe files
     ├── DataError        missing, empty or unreadable input data
     ├── CheckpointError  missing, incomplete, corrupt or mismatched checkpoints
     ├── HardwareError    unknown device or data type, a feature this machine lacks
     ├── PlanError        unknown model or hardware name, impossible parallel layout
     └── ResourceError    full disk, unwritable folder, out of memory
"""

from __future__ import annotations

__all__ = [
    "HwlmError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "HardwareError",
    "PlanError",
    "ResourceError",
]


class HwlmError(Exception):
    """Base class of every error hwlm raises on purpose."""


class ConfigError(HwlmError):
    """A configuration value or file is invalid."""


class DataError(HwlmError):
    """Input data is missing, empty or unreadable."""


class CheckpointError(HwlmError):
    """A checkpoint is missing, incomplete, corrupt or does not match the config."""


class HardwareError(HwlmError):
    """Unknown hardware, or this machine cannot do what was asked."""


class PlanError(HwlmError):
    """The planner was given an unknown name or an impossible layout."""


class ResourceError(HwlmError):
    """The machine ran out of something: disk, permissions, memory."""
