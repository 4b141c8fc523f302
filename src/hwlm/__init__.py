"""hwlm: hardware-aware language models."""
__version__ = "0.1.0"
