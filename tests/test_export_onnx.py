"""ONNX export: Optimum's names, fp32 logits equal hwlm's over batch sizes and past lengths under onnxruntime,
greedy generation through ``--backend onnx`` equal to torch's, int8/int4 quantized files, and one-line errors.

The fp32 export of the session's ``tiny_run`` (debug preset) is made once, through the CLI, and shared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hwlm.cli import main
from hwlm.errors import CheckpointError
from hwlm.export.onnx import OnnxModel, export_onnx, weights_fingerprint
from hwlm.model import ModelConfig, Transformer
from hwlm.model.functional import empty_past, forward_past
from hwlm.train.load import load_model

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def onnx_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "export"
    assert main(["export", "--run", str(tiny_run), "--format", "onnx", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", ["debug", "llama-debug"])
def test_forward_past_equals_forward_in_pieces(name: str) -> None:
    """The function the export traces: the prompt in three pieces with the past carried equals one forward."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(name, vocab_size=64)).eval()
    idx = torch.randint(0, 64, (3, 12))
    with torch.no_grad():
        want, _ = model(idx)
        a, past = forward_past(model, idx[:, :5], empty_past(model, 3))
        b, past = forward_past(model, idx[:, 5:6], past)
        c, past = forward_past(model, idx[:, 6:], past)
    torch.testing.assert_close(torch.cat([a, b, c], dim=1), want, rtol=0, atol=1e-5)
    assert past[0][0].shape == (3, model.cfg.n_kv_head, 12, model.cfg.head_dim)


def test_names_follow_optimum(onnx_dir: Path) -> None:
    om = OnnxModel.load(onnx_dir)
    inputs = [i.name for i in om.session.get_inputs()]
    outputs = [o.name for o in om.session.get_outputs()]
    n = om.cfg.n_layer
    assert inputs == ["input_ids"] + [f"past_key_values.{i}.{w}" for i in range(n) for w in ("key", "value")]
    assert outputs == ["logits"] + [f"present.{i}.{w}" for i in range(n) for w in ("key", "value")]
    assert (onnx_dir / "tokenizer.json").is_file() and (onnx_dir / "onnx_export.json").is_file()


@pytest.mark.parametrize("batch, past_len, new", [(1, 0, 7), (1, 9, 1), (3, 0, 4), (3, 5, 1), (2, 20, 6)])
def test_fp32_logits_match_hwlm(onnx_dir: Path, tiny_run: Path, batch: int, past_len: int, new: int) -> None:
    model = load_model(tiny_run).model
    om = OnnxModel.load(onnx_dir)
    gen = torch.Generator().manual_seed(batch * 100 + past_len)
    ids = torch.randint(0, om.cfg.vocab_size, (batch, past_len + new), generator=gen)
    past = om.empty_past(batch)
    if past_len:
        _, past = om.run(ids[:, :past_len].numpy(), past)
    logits, present = om.run(ids[:, past_len:].numpy(), past)
    with torch.no_grad():
        want, _ = model(ids)
    np.testing.assert_allclose(logits, want[:, past_len:].numpy(), rtol=0, atol=1e-4)
    assert present[0].shape == (batch, om.cfg.n_kv_head, past_len + new, om.cfg.head_dim)


def test_generate_backend_onnx_equals_torch(onnx_dir: Path, tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    # 40 tokens after the prompt: past the debug preset's 32-position window, so the slide is covered too.
    args = ["generate", "--run", str(tiny_run), "--prompt", "The dog", "--max-new-tokens", "40", "--temperature", "0"]
    assert main(args) == 0
    torch_text = capsys.readouterr().out
    assert main(args + ["--backend", "onnx", "--onnx", str(onnx_dir)]) == 0
    assert capsys.readouterr().out == torch_text


def test_a_file_from_another_model_is_refused(onnx_dir: Path, tiny_run: Path) -> None:
    om = OnnxModel.load(onnx_dir)
    loaded = load_model(tiny_run)
    om.check_matches(loaded.model_cfg, weights_fingerprint(loaded.model))  # its own run: fine
    other = ModelConfig.from_name("debug", vocab_size=loaded.model_cfg.vocab_size, n_layer=3)
    with pytest.raises(CheckpointError, match="was exported from another model .* export the run again"):
        om.check_matches(other)
    with torch.no_grad():
        loaded.model.wte.weight.add_(1e-3)
    with pytest.raises(CheckpointError, match="holds other weights than the run"):
        om.check_matches(loaded.model_cfg, weights_fingerprint(loaded.model))


@pytest.mark.parametrize("args, message", [
    (["--backend", "onnx"], "--backend onnx needs --onnx PATH"),
    (["--backend", "onnx", "--onnx", "{tmp}/nothing"], "does not exist"),
    (["--backend", "onnx", "--onnx", "{tmp}/bad.onnx"], "is not a readable ONNX model"),
])
def test_cli_errors_are_one_line(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                 message: str) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["generate", "--run", str(tiny_run), "--max-new-tokens", "2", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_quantize_needs_onnx_format(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "--run", str(tiny_run), "--quantize", "int8", "--out", str(tmp_path / "x")]) == 1
    assert "applies to --format onnx only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how, op, tol", [("int8", "MatMulInteger", 0.1), ("int4", "MatMulNBits", 0.3)])
def test_quantized_exports_use_the_quantized_kernels(tmp_path: Path, how: str, op: str, tol: float) -> None:
    """A width-64 model (int4 groups of 32 need K >= 32): the MatMuls become quantized ops, logits stay close."""
    import onnx

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("debug", vocab_size=128, n_embd=64)).eval()
    out = export_onnx(model, tmp_path / how, quantize=how)
    graph = onnx.load(str(out / "model.onnx")).graph
    weights = {i.name for i in graph.initializer}
    assert sum(n.op_type == op for n in graph.node) == 4 * 2 + 1  # 4 weight matrices per block, then lm_head
    # What stays a float MatMul is attention (activations times activations), never a weight.
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and set(n.input) & weights]
    om = OnnxModel.load(out)
    assert om.quantize == how and om.fingerprint == weights_fingerprint(model)
    ids = torch.randint(0, 128, (2, 8))
    logits, _ = om.run(ids.numpy(), om.empty_past(2))
    with torch.no_grad():
        want, _ = model(ids)
    err = np.abs(logits - want.numpy()).max() / want.abs().max().item()
    assert 0 < err < tol, f"{how}: relative error {err:.3g}"


@pytest.mark.slow
def test_bench_infer_backend_onnx_times_the_same_grid() -> None:
    from hwlm.bench.workloads import InferBenchConfig, run_infer_bench
    from hwlm.errors import HardwareError

    record = run_infer_bench(InferBenchConfig(model="debug", device="cpu", backend="onnx", batch_sizes=[1, 2],
                                              prompt_lens=[4], new_tokens=3, repeats=1, energy="off"))
    assert record["config"]["backend"] == "onnx"
    cells = [s for s in record["samples"] if s["name"] == "infer_cell"]
    assert [c["batch"] for c in cells] == [1, 2] and all(len(c["tpot_seconds"]) == 2 for c in cells)
    with pytest.raises(HardwareError, match="--backend onnx runs fp32 on the CPU"):
        run_infer_bench(InferBenchConfig(model="debug", device="cpu", backend="onnx", precision="bf16"))


@pytest.mark.slow
def test_llama_flavour_exports_with_rotary_positions_and_grouped_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("llama-debug", vocab_size=64)).eval()  # 2 query heads, 1 key/value
    om = OnnxModel.load(export_onnx(model, tmp_path / "llama"))
    ids = torch.randint(0, 64, (2, 9))
    _, past = om.run(ids[:, :6].numpy(), om.empty_past(2))
    logits, _ = om.run(ids[:, 6:].numpy(), past)
    with torch.no_grad():
        want, _ = model(ids)
    np.testing.assert_allclose(logits, want[:, 6:].numpy(), rtol=0, atol=1e-4)
