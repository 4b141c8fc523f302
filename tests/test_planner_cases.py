"""Shape checks of benchmarks/planner_cases.toml, the planner's validation set of published runs.

These tests only check that every case is complete, sourced and names known hardware; the
planner's accuracy against ``measured`` is tested with the estimators.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from hwlm.plan.catalog import get_device, load_catalog, normalize_id

CASES_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "planner_cases.toml"
DATA = tomllib.loads(CASES_FILE.read_text(encoding="utf-8"))
CASES = DATA["case"]

KINDS = {"train", "prefill", "decode", "batch", "serve"}  # batch: one static batch of requests end to end
UNITS = {"time_s", "device_hours", "tpot_s", "ttft_s", "tokens_per_s", "tflops_per_device", "mfu",
         "output_tokens_per_s", "itl_p50_s", "ttft_p50_s"}
SCOPES = {"job", "device", "sequence"}
PRECISIONS = {"fp32", "tf32", "bf16", "fp16", "fp8"}
WEIGHT_DTYPES = {"int8", "int4", "fp8"}
LAYOUT_KEYS = {"tp", "pp", "dp", "cp", "ep", "fsdp", "zero", "recompute", "micro_batch", "global_batch",
               "compile", "schedule", "virtual_stages"}
CASE_KEYS = {"id", "kind", "model", "hardware", "devices", "precision", "weight_dtype", "tokens", "seq_len",
             "batch", "prompt_len", "gen_len", "measured", "unit", "scope", "layout", "arch", "device", "source", "notes",
             "framework", "engine", "verified", "concurrency", "rate", "capacity_factor"}
DEVICE_KEYS = {"memory_bytes", "memory_bw", "flops_bf16", "flops_fp16", "flops_fp8", "flops_fp32"}
ARCH_KEYS = {"n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size", "seq_len"}


def case_id(case: dict) -> str:
    return str(case.get("id", "?"))


def test_file_has_enough_cases_of_each_kind() -> None:
    assert DATA["version"] == 1
    kinds = [c["kind"] for c in CASES]
    assert len(CASES) >= 80
    assert kinds.count("train") >= 12 and kinds.count("decode") + kinds.count("prefill") >= 8
    assert kinds.count("batch") + kinds.count("prefill") >= 15  # serving or prefill rows
    beyond = [c for c in CASES if get_device(c["hardware"]).vendor != "nvidia"
              or not c["hardware"].startswith(("a100", "h100"))]
    assert len(beyond) >= 25
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case_stack_is_known(case: dict) -> None:
    from hwlm.plan.software import ENGINES, FRAMEWORKS
    assert case.get("framework", "hwlm") in FRAMEWORKS and case.get("engine", "hwlm") in ENGINES
    assert isinstance(case.get("verified", True), bool)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case_is_complete_and_sourced(case: dict) -> None:
    unknown = set(case) - CASE_KEYS
    assert not unknown, f"unknown keys {unknown}"
    assert case["id"] == normalize_id(case["id"])
    assert case["kind"] in KINDS
    assert isinstance(case["model"], str) and case["model"]
    assert case["precision"] in PRECISIONS
    assert case.get("weight_dtype", "int8") in WEIGHT_DTYPES
    assert case["unit"] in UNITS
    assert isinstance(case["measured"], (int, float)) and case["measured"] > 0
    if case["unit"] == "mfu":
        assert case["measured"] < 1
    if case["unit"] == "tokens_per_s":
        assert case.get("scope") in SCOPES, "tokens_per_s needs scope = job | device | sequence"
    # A source names a document and a year, and says where in it (table, section, figure, file).
    source = case["source"]
    assert re.search(r"(19|20)\d\d", source), "source lacks a year"
    assert re.search(r"Table|§|Figure|table|README|comment|card|docs/|section", source), \
        "source lacks the table/section"
    if case["unit"] != "device_hours":
        assert isinstance(case.get("devices"), int) and case["devices"] >= 1
    elif "devices" in case:
        assert isinstance(case["devices"], int) and case["devices"] >= 1


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case_shape_matches_its_kind(case: dict) -> None:
    if case["kind"] == "train":
        assert case["tokens"] > 0 and case["seq_len"] > 0
        assert case["unit"] in {"time_s", "device_hours", "tokens_per_s", "tflops_per_device", "mfu"}
    else:
        assert case["batch"] >= 1 and case["prompt_len"] >= 1 and case["gen_len"] >= 0
        assert case["unit"] in ({"output_tokens_per_s"} if case["kind"] == "batch" else
                                {"output_tokens_per_s", "itl_p50_s", "ttft_p50_s"} if case["kind"] == "serve" else
                                {"tpot_s", "ttft_s", "tokens_per_s", "time_s"})
        if case["kind"] == "serve":
            assert (case.get("concurrency") is None) != (case.get("rate") is None)
        if case["kind"] == "decode":
            assert case["gen_len"] >= 1
    layout = case.get("layout", {})
    assert set(layout) <= LAYOUT_KEYS, f"unknown layout keys {set(layout) - LAYOUT_KEYS}"
    degrees = [layout.get(k, 1) for k in ("tp", "pp", "cp")]
    data = layout.get("dp", 1) * layout.get("fsdp", 1)
    product = data * degrees[0] * degrees[1] * degrees[2]
    if "devices" in case and any(k in layout for k in ("tp", "pp", "dp", "fsdp", "cp")):
        assert product == case["devices"], f"layout degrees multiply to {product}, not {case['devices']}"
    if "arch" in case:
        assert set(case["arch"]) <= ARCH_KEYS and {"n_layers", "d_model", "n_heads", "vocab_size"} <= set(case["arch"])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case_hardware_is_in_the_catalog(case: dict) -> None:
    dev = get_device(case["hardware"], load_catalog())
    assert dev.id == case["hardware"], "use the exact catalog id, not an alias"
    dtype = case["precision"]
    assert dtype in dev.flops or dev.kind == "cpu", f"{dev.id} has no {dtype} peak"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case_model_is_a_planner_preset_or_inline(case: dict) -> None:
    if "arch" in case:
        return
    from hwlm.plan.models import get_model  # the planner's presets: a case must name one it knows

    assert get_model(case["model"]).name == case["model"], "use the exact preset name, not an alias"


def test_device_variants_only_give_published_figures_with_notes() -> None:
    for case in CASES:
        if "device" not in case:
            continue
        assert set(case["device"]) <= DEVICE_KEYS, f"{case_id(case)}: unknown device keys"
        assert all(isinstance(v, (int, float)) and v > 0 for v in case["device"].values())


def test_held_out_split_is_frozen() -> None:
    import hashlib
    import sys
    sys.path.insert(0, str(CASES_FILE.parent))
    import planner_validation as pv
    salt, frozen = pv._split()
    assert salt and len(frozen) >= 43
    for case in pv.load_cases(pv.CASES):
        h = int(hashlib.sha256(case["id"].encode()).hexdigest(), 16) % 2 == 1
        if case["id"] in frozen:  # the rows the priors were fitted on keep their original split
            assert pv.held_out(case) == h == (frozen[case["id"]] == "held-out")
        else:
            assert pv.held_out(case) == (int(hashlib.sha256((salt + case["id"]).encode()).hexdigest(), 16) % 2 == 1)
