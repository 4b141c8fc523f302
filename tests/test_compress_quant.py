"""hwlm compress int8 / int4: quantized layers against float references, run-folder round trips, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hwlm.compress import CompressConfig, compress
from hwlm.errors import ConfigError, HardwareError
from hwlm.model.quantized import Int4Linear, Int8Linear, int4_kernel
from hwlm.train.load import load_model

from compress_fixtures import TABLE, logits_of


@pytest.mark.parametrize("mode", ["w8a8", "w8a16"])
def test_int8_linear_matches_its_dequantized_weights(mode: str) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = Int8Linear.from_linear(lin, mode)
    assert (q.dequantized() - lin.weight).abs().max() <= q.scales.max() / 2 + 1e-7  # round to nearest
    x = torch.randn(5, 64)
    ref = torch.nn.functional.linear(x, q.dequantized(), q.bias)
    got = q(x)
    # w8a8 adds the activation rounding, w8a16 bf16 activations: both small against the output scale.
    assert (got - ref).abs().max() < 0.02 * ref.abs().max()
    assert q(x[0]).shape == (48,)  # one vector, as the decode path passes


def test_int4_linear_matches_its_dequantized_weights() -> None:
    if int4_kernel("cpu") is None:
        pytest.skip("this torch has no CPU int4 kernel")
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=False)
    q = Int4Linear.from_linear(lin, 32)
    err = (q.dequantized() - lin.weight).abs()
    assert err.max() <= q.scales.max() / 2 + 1e-6
    x = torch.randn(3, 64)
    ref = x @ q.dequantized().t()
    assert (q(x) - ref).abs().max() < 0.03 * ref.abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["w8a8", "w8a16"])
def test_int8_run_round_trip(small_run: Path, tmp_path: Path, precision: str) -> None:
    out = tmp_path / precision
    result = compress(CompressConfig(run=small_run, method="int8", precision=precision, out=out, **TABLE))
    record = json.loads((out / "compress.json").read_text())
    assert record["precision"] == precision and record["source"]["run"] == str(small_run)
    loaded = load_model(out)
    assert loaded.run_config["compression"]["precision"] == precision
    assert isinstance(loaded.model.h[0].attn.c_attn, Int8Linear)
    # The stored weights are int8, and the file is about a quarter of the float one.
    ckpt_bytes = (loaded.path / "model.safetensors").stat().st_size
    float_bytes = (load_model(small_run).path / "model.safetensors").stat().st_size
    assert ckpt_bytes < 0.6 * float_bytes
    base, new = load_model(small_run), loaded
    a, b = logits_of(base.model), logits_of(new.model)
    assert torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True,
                                      reduction="batchmean") < 1e-3
    rows = {r["name"]: r for r in result.rows}
    assert set(rows) == {"original (fp32)", f"int8 {precision}"}
    assert abs(rows[f"int8 {precision}"]["ppl_delta_pct"]) < 1.0
    if precision == "w8a8":  # issue 9's bound for int8: at most +0.1% perplexity (-0.008% here)
        assert rows["int8 w8a8"]["ppl_delta_pct"] <= 0.1
    assert "tok/s b1" in result.table and "J/token" in result.table


@pytest.mark.slow
def test_int8_run_decodes_evaluates_and_exports(small_run: Path, tmp_path: Path) -> None:
    from hwlm.evaluate import EvalConfig, evaluate
    from hwlm.export.hf import export_hf
    from hwlm.model import generate

    out = tmp_path / "q"
    compress(CompressConfig(run=small_run, method="int8", precision="w8a8", out=out, table=False))
    loaded = load_model(out)
    prompt = [1, 2, 3]
    eager = list(generate(loaded.model, prompt, 8, temperature=0))
    assert len(eager) == 8
    # The batch-1 module path equals the general forward pass.
    with torch.no_grad():
        full = loaded.model(torch.tensor([prompt + eager[:-1]]))[0][0, -1]
    assert int(full.argmax()) == eager[-1]
    res = evaluate(EvalConfig(run=out, max_batches=2, batch_size=4, device="cpu"))
    assert res.perplexity > 1
    hf_dir = export_hf(loaded.model, loaded.model_cfg, loaded.path / "tokenizer.json", tmp_path / "hf")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
        ours = loaded.model(torch.tensor([prompt]))[0][0]
    assert (ref - ours).abs().max() < 0.05 * ours.abs().max()  # dequantized float weights, not bit-equal


@pytest.mark.slow
def test_int4_run_round_trip_and_auto_choice(small_run: Path, tmp_path: Path) -> None:
    if int4_kernel("cpu") is None:
        pytest.skip("this torch has no CPU int4 kernel")
    result = compress(CompressConfig(run=small_run, method="int4", group_size=32, out=tmp_path / "q4", table=False))
    loaded = load_model(tmp_path / "q4")
    assert isinstance(loaded.model.h[1].mlp.c_fc, Int4Linear)
    assert loaded.run_config["compression"] == result.record["compression"]
    assert len(list(__import__("hwlm.model", fromlist=["generate"]).generate(loaded.model, [1, 2], 4,
                                                                            temperature=0))) == 4
    auto = compress(CompressConfig(run=small_run, method="int8", out=tmp_path / "auto", table=False))
    choice = auto.record["precision_choice"]
    assert choice["asked"] == "auto" and choice["chosen"] in ("w8a8", "w8a16")
    assert set(choice["seconds_per_token"]) == {"w8a8", "w8a16"}
    assert load_model(tmp_path / "auto").run_config["compression"]["precision"] == choice["chosen"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="zip"), "unknown compression method 'zip'"),
    (dict(method="prune", sparsity=1.0), "sparsity must be in (0, 1)"),
    (dict(method="prune", sparsity=0.0), "sparsity must be in (0, 1)"),
    (dict(method="int4", group_size=48), "int4 group size 48 is not supported"),
    (dict(method="int8", precision="w4a16"), "method int8 writes w8a8 or w8a16"),
    (dict(method="prune", pattern="1:3"), "unknown sparsity pattern"),
])
def test_bad_options_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CompressConfig(run="r", out="o", **kwargs)


def test_group_size_not_dividing_the_width_writes_nothing(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "q"
    with pytest.raises((ConfigError, HardwareError), match="does not divide the layer width 16"):
        compress(CompressConfig(run=tiny_run, method="int4", group_size=32, out=out, table=False))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_errors_exit_one_with_one_line(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hwlm.cli import main

    assert main(["compress", "--run", str(tiny_run), "--method", "zip", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown compression method" in err[0]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("x")
    assert main(["compress", "--run", str(tiny_run), "--out", str(busy)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_cli_compress_prints_the_table(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hwlm.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["compress", "--run", str(run), "--method", "w8a8", "--out", str(tmp_path / "q"),
                 "--batches", "1,2", "--decode-steps", "2", "--eval-batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "| int8 w8a8 |" in out and "| original (fp32) |" in out
    assert (tmp_path / "q" / "compress.json").is_file()


def test_int4_without_a_kernel_names_the_alternative() -> None:
    from hwlm.compress.quant import quantize_model
    from hwlm.model import ModelConfig, Transformer

    model = Transformer(ModelConfig.from_name("debug", n_embd=64)).to("meta")  # a device with no int4 kernel
    with pytest.raises(HardwareError, match="no int4 matmul kernel for meta.*--method int8.*MatMulNBits"):
        quantize_model(model, "w4a16", 32)
    assert isinstance(model.h[0].attn.c_attn, torch.nn.Linear)  # nothing was swapped
