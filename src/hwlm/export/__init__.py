"""Export trained hwlm models to other ecosystems.

    >>> from hwlm.export import export_hf
    >>> export_hf(model, model_cfg, "data/tokenizer.json", "runs/hf-export")  # AutoModelForCausalLM loads it

``export_hf`` imports torch on first use (PEP 562), so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_hf"]


def __getattr__(name: str) -> Any:
    if name == "export_hf":
        from hwlm.export.hf import export_hf
        return export_hf
    raise AttributeError(f"module 'hwlm.export' has no attribute {name!r}")
