"""The layout shows the flow: a stage imports only earlier stages and the shared core.

data -> model -> train -> evaluate -> export/compress -> bench -> plan -> serve -> report.
``cli``, ``quickstart`` and ``__main__`` sit on top. ``plan`` never imports torch, at any depth.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hwlm"
CORE = {"errors", "io", "config", "formulas", "calibration", "device", "hw", "crypt", "__init__"}
ORDER = ["data", "model", "train", "evaluate", "evaluate_classify", "export", "compress", "bench", "plan", "tune", "serve",
         "report"]
TOP = {"cli", "quickstart", "__main__"}


def _part(module_path: Path) -> str:
    rel = module_path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _hwlm_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported top-level hwlm part, is it torch) for each import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for n in names:
            parts = n.split(".")
            if parts[0] == "hwlm" and len(parts) > 1:
                found.append((parts[1], False))
            elif parts[0] == "torch":
                found.append(("torch", True))
    return found


def _files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(SRC)))
def test_stage_imports_only_earlier_stages(path: Path) -> None:
    me = _part(path)
    if me in TOP:
        return
    for part, is_torch in _hwlm_imports(path):
        if is_torch:
            assert me != "plan", f"{path.relative_to(SRC)} imports torch: the planner must stay torch-free"
            continue
        if part in CORE or part == me:
            continue
        assert part in ORDER, f"{path.relative_to(SRC)} imports unknown part hwlm.{part}"
        if me in CORE:
            pytest.fail(f"core module {path.name} imports stage hwlm.{part}")
        assert ORDER.index(part) < ORDER.index(me), (
            f"{path.relative_to(SRC)} (stage {me}) imports later stage hwlm.{part}")


def test_core_and_planner_import_without_torch() -> None:
    code = ("import sys, importlib, hwlm.errors, hwlm.io, hwlm.config, hwlm.formulas, hwlm.device, hwlm.cli\n"
            "if importlib.util.find_spec('hwlm.plan'): import hwlm.plan\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
