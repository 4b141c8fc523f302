"""Tests of the hardware catalog: every entry validates, lookups forgive, bad files fail in one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hwlm.errors import ConfigError, PlanError
from hwlm.plan import catalog as cat
from hwlm.plan.catalog import (DTYPES, KINDS, format_device, get_device, list_devices, load_catalog,
                               normalize_dtype, normalize_id)

BUILTIN = load_catalog()
IDS = BUILTIN.ids()

GOOD = """
[[device]]
id = "my-npu"
name = "My NPU"
vendor = "acme"
kind = "asic"
aliases = ["npu-one"]
memory_bytes = 16e9
memory_bw = 400e9
devices_per_node = 4
tdp_w = 75
[device.flops]
bf16 = 100e12
int8 = 200e12
[device.sources]
flops = "Acme NPU datasheet, 2025"
memory = "Acme NPU datasheet, 2025"
devices_per_node = "Acme server brief, 2025"
power = "Acme NPU datasheet, 2025"
"""


def write(tmp_path: Path, text: str, name: str = "user.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- every built-in entry ---------------------------------------------------------------------

@pytest.mark.parametrize("dev_id", IDS)
def test_entry_is_valid_and_sourced(dev_id: str) -> None:
    dev = BUILTIN.get(dev_id)
    assert dev.id == dev_id == normalize_id(dev_id)
    assert dev.kind in KINDS and dev.name and dev.vendor
    assert dev.dtypes and set(dev.flops) <= set(DTYPES)
    for d in dev.dtypes:
        assert dev.peak_flops(d) > 1e9
        assert len(dev.source(d)) > 15
    figures = ["memory_bytes", "memory_bw", "devices_per_node"]
    figures += [f for f in ("intra_node_bw", "inter_node_bw", "tdp_w", "idle_w", "price_per_hour")
                if getattr(dev, f) is not None]
    for f in figures:
        src = dev.source(f)
        assert len(src) > 15 and any(ch.isdigit() for ch in src), f"{dev_id}.{f} source lacks a date"
    # Bandwidth below capacity per second is the usual shape; a dense tensor peak is never below FP32.
    assert dev.memory_bw > 1e9 and dev.memory_bytes > 1e6
    if "fp32" in dev.flops and "bf16" in dev.flops:
        assert dev.flops["bf16"] >= dev.flops["fp32"]
    assert dev.scale_up_devices >= 1
    text = format_device(dev)
    assert dev.id in text and "sources:" in text


def test_catalog_covers_the_required_parts() -> None:
    required = ["v100", "t4", "a10g", "l4", "l40s", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie",
                "h200", "b200", "rtx-4090", "mi250x", "mi300x", "mi325x", "tpu-v4", "tpu-v5e", "tpu-v5p",
                "tpu-v6e", "gaudi2", "gaudi3", "trn1", "inf2", "m2-ultra", "m3-max", "m4-max",
                "xeon-8480", "xeon-8592", "xeon-6980p", "epyc-9654", "epyc-9755"]
    assert not [r for r in required if r not in IDS]
    assert len(BUILTIN) >= 30
    assert len(list_devices("fpga") + list_devices("asic")) >= 2
    assert {d.kind for d in BUILTIN} >= {"cpu", "gpu", "tpu", "accelerator", "fpga", "asic"}


def test_known_datasheet_values() -> None:
    # Dense, not sparsity, figures: the datasheets print 1,979 (H100 BF16) and 624 (A100 BF16) with sparsity.
    assert get_device("h100-sxm").peak_flops("bf16") == 989.4e12
    assert get_device("a100-80gb").peak_flops("bfloat16") == 312e12
    assert get_device("a100-80gb").memory_bw == 2039e9
    assert get_device("tpu-v5e").peak_flops("bf16") == 197e12
    assert get_device("h200").memory_bytes == 141e9


# --- lookups ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("h100", "h100-sxm"), ("H100", "h100-sxm"), ("NVIDIA H100", "h100-sxm"), ("h100_pcie", "h100-pcie"),
    ("A100 80GB", "a100-80gb"), ("tpu_v5e", "tpu-v5e"), ("TPU v5e", "tpu-v5e"), ("v6e", "tpu-v6e"),
    ("mi300", "mi300x"), ("Gaudi 3", "gaudi3"), ("trainium", "trn1"), ("  L40S ", "l40s"),
])
def test_forgiving_lookup(name: str, expected: str) -> None:
    assert get_device(name).id == expected


def test_ambiguous_name_lists_the_candidates() -> None:
    with pytest.raises(PlanError, match=r"'a100' is ambiguous: it matches a100-40gb, a100-80gb"):
        get_device("a100")


def test_unknown_name_lists_close_ids() -> None:
    with pytest.raises(PlanError, match=r"unknown hardware 'h1OO'; closest: h100-sxm"):
        get_device("h1OO")
    with pytest.raises(PlanError, match=r"unknown hardware 'tpu-v9'; closest: .*tpu-v"):
        get_device("tpu-v9")


def test_missing_dtype_lists_available_ones() -> None:
    with pytest.raises(PlanError, match=r"v100 has no published peak for dtype 'bf16'; it has: fp64, fp32, fp16"):
        get_device("v100").peak_flops("bf16")
    assert normalize_dtype("torch.bfloat16") == "bf16"


def test_list_devices_by_kind() -> None:
    tpus = list_devices("tpu")
    assert {d.id for d in tpus} == {"tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e"}
    with pytest.raises(PlanError, match="unknown device kind 'quantum'; choose one of: cpu, gpu"):
        list_devices("quantum")


# --- user files -------------------------------------------------------------------------------

def test_user_file_adds_a_device(tmp_path: Path) -> None:
    catalog = load_catalog([write(tmp_path, GOOD)])
    dev = get_device("npu one", catalog)
    assert dev.id == "my-npu" and dev.peak_flops("int8") == 200e12
    assert dev.source("memory_bw") == "Acme NPU datasheet, 2025"
    assert len(catalog) == len(BUILTIN) + 1


def test_env_var_folder_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "extra"
    folder.mkdir()
    write(folder, GOOD, "a.toml")
    monkeypatch.setenv("HWLM_CATALOG", str(folder))
    assert get_device("my-npu").vendor == "acme"


def test_edited_file_is_reloaded(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert load_catalog([path]).get("my-npu").tdp_w == 75
    path.write_text(textwrap.dedent(GOOD).replace("tdp_w = 75", "tdp_w = 80.5"), encoding="utf-8")
    assert load_catalog([path]).get("my-npu").tdp_w == 80.5


def test_duplicate_id_needs_override(tmp_path: Path) -> None:
    dup = GOOD.replace('id = "my-npu"', 'id = "h100-sxm"').replace('aliases = ["npu-one"]', "")
    with pytest.raises(ConfigError, match=r"device id 'h100-sxm' is already defined in .*nvidia.toml; "
                                          r"set override = true"):
        load_catalog([write(tmp_path, dup)])
    over = dup.replace('kind = "asic"', 'kind = "asic"\noverride = true')
    assert load_catalog([write(tmp_path, over, "over.toml")]).get("h100-sxm").vendor == "acme"


@pytest.mark.parametrize("edit, message", [
    (("memory_bw = 400e9", "memory_bw = 400"), r"key 'memory_bw' = 400 is outside .*bytes/s"),
    (("memory_bytes = 16e9", "memory_bytes = -16e9"), r"key 'memory_bytes' must be positive"),
    (("tdp_w = 75", 'tdp_w = "75 W"'), r"key 'tdp_w' must be a number"),
    (('kind = "asic"', 'kind = "npu"'), r"kind 'npu' is not one of: cpu, gpu"),
    (('id = "my-npu"', 'id = "My NPU"'), r"id must be lower-case and dash-separated, e.g. 'my-npu'"),
    (("bf16 = 100e12", "bf8 = 100e12"), r"unknown dtype 'flops.bf8'"),
    (('memory = "Acme NPU datasheet, 2025"', ""), r"figure 'memory_bytes' has no source; add sources.memory_bytes "
                                                  r"or sources.memory"),
    (('flops = "Acme NPU datasheet, 2025"', 'int8 = "Acme, 2025"'), r"figure 'flops.bf16' has no source"),
    (("devices_per_node = 4", "devices_per_node = 0"), r"key 'devices_per_node' must be a whole number"),
    (("tdp_w = 75", "tdp_w = 75\ncolour = 'red'"), r"unknown key\(s\): colour"),
    (('name = "My NPU"', ""), r"missing required key\(s\): name"),
    (("int8 = 200e12", "int8 = 200e12\n[device.achievable]\nbf16 = 150e12"),
     r"achievable.bf16 = 1.5e\+14 needs a peak flops.bf16 at least as large"),
    (("int8 = 200e12", "int8 = 200e12\n[device.achievable]\nbf16 = 80e12"), r"figure 'achievable' has no source"),
    (("tdp_w = 75", 'tdp_w = 75\nno_balance_penalty = ["fp8"]'),
     r"key 'no_balance_penalty' must list dtypes with a peak in \[device.flops\]"),
    (("tdp_w = 75", 'tdp_w = 75\nno_balance_penalty = ["bf16"]'), r"figure 'no_balance_penalty' has no source"),
])
def test_malformed_device_names_file_device_and_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError, match=message) as info:
        load_catalog([path])
    text = str(info.value)
    assert text.startswith(f"catalog file {path}") and "\n" not in text


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        load_catalog([write(tmp_path, "[[device]\nid = 1")])
    with pytest.raises(ConfigError, match=r"no \[\[device\]\] tables found"):
        load_catalog([write(tmp_path, "", "empty.toml")])
    with pytest.raises(ConfigError, match=r"does not exist; fix the path in \$HWLM_CATALOG"):
        load_catalog([tmp_path / "nope.toml"])


def test_builtin_files_have_no_duplicate_ids() -> None:
    # _merge would raise on a duplicate; check the raw files too so a test names the culprit.
    seen: dict[str, Path] = {}
    for path in sorted(cat.CATALOG_DIR.glob("*.toml")):
        for dev, _ in cat._read_file(path):
            assert dev.id not in seen, f"{dev.id} in {path} and {seen[dev.id]}"
            seen[dev.id] = path


# --- import rule ------------------------------------------------------------------------------

def test_catalog_never_imports_torch() -> None:
    code = ("import sys, hwlm.plan.catalog as c; c.load_catalog(); c.format_device(c.get_device('h100'));"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_achievable_rate_replaces_the_peak_in_compute_bound_terms() -> None:
    """A vendor-measured max dense-GEMM rate (MI300X: AMD's MAF) is what matmul_eff scales: the prior becomes
    matmul_eff x achievable/peak, with the balance penalty at the achievable rate's ridge point."""
    from hwlm.plan.efficiency import REF_RIDGE, kind_priors, priors_for
    dev = get_device("mi300x")
    peak, maf, bw = dev.peak_flops("fp8"), dev.achievable_flops("fp8"), dev.memory_bw
    assert maf == 1273e12 and "Max-Achievable" in dev.source("achievable")
    assert get_device("h100-sxm").achievable_flops("bf16") is None
    g = kind_priors("gpu")
    want = g.matmul_eff * maf / peak * min(1.0, (REF_RIDGE / (maf / bw)) ** g.ridge_exponent)
    assert priors_for("gpu", "fp8", peak, bw, achievable=maf).matmul_eff == pytest.approx(want)
    assert priors_for("gpu", "fp8", peak, bw).matmul_eff > priors_for("gpu", "fp8", peak, bw, achievable=maf).matmul_eff
    text = format_device(dev)
    assert "measured max dense GEMM" in text and "1.273 PFLOP/s" in text and "Max-Achievable" in text


def test_a_measured_gemm_utilisation_lifts_the_balance_penalty() -> None:
    """Gaudi 2 FP8 is listed in ``no_balance_penalty`` (arXiv:2503.09975 measures its FP8 GEMMs above 90% MFU):
    its prior is the kind's matmul_eff without the ridge-point penalty; bf16 and Gaudi 3 keep the penalty."""
    from hwlm.plan.efficiency import REF_RIDGE, kind_priors, priors_for
    g2, g3 = get_device("gaudi2"), get_device("gaudi3")
    assert not g2.balance_penalty("fp8") and g2.balance_penalty("bf16") and g3.balance_penalty("fp8")
    assert "2503.09975" in g2.source("no_balance_penalty")
    p = kind_priors("accelerator")
    peak, bw = g2.peak_flops("fp8"), g2.memory_bw
    assert priors_for("accelerator", "fp8", peak, bw, balance_penalty=False).matmul_eff == pytest.approx(p.matmul_eff)
    penalised = p.matmul_eff * min(1.0, (REF_RIDGE / (peak / bw)) ** p.ridge_exponent)
    assert priors_for("accelerator", "fp8", peak, bw).matmul_eff == pytest.approx(penalised)
    assert penalised < p.matmul_eff
    assert "no balance penalty" in format_device(g2) and "no balance penalty" not in format_device(g3)
