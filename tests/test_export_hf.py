"""export_hf: transformers loads the folder offline and its logits equal hwlm's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hwlm.errors import CheckpointError, DataError
from hwlm.export import export_hf
from hwlm.model import ModelConfig, Transformer

transformers = pytest.importorskip("transformers")

VOCAB = 320


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny byte-level BPE with <|endoftext|>, trained here (no dependency on the data stage)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog, hello world"] * 20, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def random_model(name: str, **kw) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(name, vocab_size=VOCAB, **kw)).eval()
    with torch.no_grad():  # move every weight off its init (norm gains 1, biases 0) so all are checked
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


CASES = [
    ("debug", {}, "GPT2LMHeadModel"),
    ("debug", dict(bias=False, tie_embeddings=False), "GPT2LMHeadModel"),
    ("llama-debug", {}, "LlamaForCausalLM"),
    ("llama-debug", dict(n_head=4, n_kv_head=2, bias=True, tie_embeddings=False, rope_theta=500.0),
     "LlamaForCausalLM"),
]


@pytest.mark.parametrize("name, kw, arch", CASES)
def test_transformers_loads_the_export_and_logits_match(tmp_path: Path, tokenizer_json: Path,
                                                        name: str, kw: dict, arch: str) -> None:
    model = random_model(name, **kw)
    out = export_hf(model, model.cfg, tokenizer_json, tmp_path / "hf")
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True,
                                                                 local_files_only=True)
    assert type(hf).__name__ == arch
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf.eval()
    idx = torch.randint(0, VOCAB, (2, model.cfg.block_size))
    with torch.no_grad():
        diff = (hf(idx).logits - model(idx)[0]).abs().max().item()
    assert diff < 1e-4


def test_tokenizer_loads_with_end_of_text_as_bos_and_eos(tmp_path: Path, tokenizer_json: Path) -> None:
    model = random_model("debug")
    out = export_hf(model, model.cfg, tokenizer_json, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    eot = json.loads((out / "config.json").read_text())["eos_token_id"]
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.eos_token_id == eot
    assert tok.decode(tok("hello world").input_ids) == "hello world"
    assert json.loads((out / "hwlm_model_config.json").read_text())["n_layer"] == 2
    assert not list(tmp_path.glob(".hf*")), "no temp folder is left behind"


def test_hf_generate_runs_on_the_export(tmp_path: Path, tokenizer_json: Path) -> None:
    model = random_model("llama-debug")
    out = export_hf(model, model.cfg, tokenizer_json, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    from hwlm.model import generate
    prompt = [5, 6, 7]
    ours = list(generate(model, prompt, 8, temperature=0))
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert theirs[0, len(prompt):].tolist() == ours


def test_missing_tokenizer_is_a_data_error(tmp_path: Path) -> None:
    model = random_model("debug")
    with pytest.raises(DataError, match="tokenizer file .*nope.json does not exist"):
        export_hf(model, model.cfg, tmp_path / "nope.json", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_tokenizer_without_end_of_text_is_a_data_error(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    path = tmp_path / "tokenizer.json"
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
    model = random_model("debug")
    with pytest.raises(DataError, match=r"has no <\|endoftext\|> token"):
        export_hf(model, model.cfg, path, tmp_path / "hf")


def test_tokenizer_larger_than_model_vocab_is_refused(tmp_path: Path, tokenizer_json: Path) -> None:
    torch.manual_seed(0)
    small = Transformer(ModelConfig.from_name("debug", vocab_size=100))
    with pytest.raises(CheckpointError, match=r"has \d+ tokens but the model only 100"):
        export_hf(small, small.cfg, tokenizer_json, tmp_path / "hf")
