"""hwlm import --format hf: a local transformers GPT-2 / Llama folder becomes an hwlm run with equal logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hwlm.errors import HwlmError
from hwlm.export.hf_import import import_hf
from hwlm.train.load import load_model


def _hf_folder(kind: str, tiny_data: Path, out: Path, **extra) -> Path:
    """A random tiny HF model saved locally with the tiny data's tokenizer (vocab 300): no download."""
    import transformers

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=2, **extra)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                       **extra)
        model = transformers.LlamaForCausalLM(cfg)
    model.eval().save_pretrained(out)
    shutil.copyfile(tiny_data / "tokenizer.json", out / "tokenizer.json")
    return out


@pytest.mark.parametrize("kind, extra", [("gpt2", {}), ("llama", {}), ("llama", {"tie_word_embeddings": True}),
                                         ("gpt2", {"tie_word_embeddings": False})])
def test_import_matches_transformers_logits(kind: str, extra: dict, tiny_data: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    src = _hf_folder(kind, tiny_data, tmp_path / "hf", **extra)
    result = import_hf(src, tmp_path / "run")
    loaded = load_model(result.out)
    hf = AutoModelForCausalLM.from_pretrained(src).eval()
    x = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x).logits
        ours = loaded.model(x)[0]
    assert (ref - ours).abs().max() < 1e-4
    assert result.flavour == kind and result.params == loaded.model.num_params()
    assert loaded.run_config["imported"]["from"] == str(src)
    assert loaded.eot_id == loaded.tokenizer.token_to_id("<|endoftext|>")


def test_import_then_compress_and_cli(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hwlm.cli import main

    src = _hf_folder("gpt2", tiny_data, tmp_path / "hf")
    assert main(["import", "--format", "hf", str(src), "--out", str(tmp_path / "run")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["compress", "--run", str(tmp_path / "run"), "--method", "w8a8", "--out", str(tmp_path / "q"),
                 "--data", str(tiny_data), "--no-table"]) == 0
    assert isinstance(load_model(tmp_path / "q").model.lm_head, torch.nn.Module)


def test_bad_folders_are_one_line(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hwlm.cli import main

    src = _hf_folder("gpt2", tiny_data, tmp_path / "hf")
    cfg = json.loads((src / "config.json").read_text())
    bad = tmp_path / "bert"
    shutil.copytree(src, bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(HwlmError, match="model_type 'bert' cannot be imported"):
        import_hf(bad, tmp_path / "x")
    act = tmp_path / "relu"
    shutil.copytree(src, act)
    (act / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    with pytest.raises(HwlmError, match="activation 'relu'"):
        import_hf(act, tmp_path / "x")
    (src / "tokenizer.json").unlink()
    capsys.readouterr()  # transformers' own warnings while building the folder
    assert main(["import", str(src), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no tokenizer.json" in err[0]
    assert main(["import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
