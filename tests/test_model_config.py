"""ModelConfig: presets, defaults per flavour, validation messages, torch-free import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hwlm.config import from_dict, to_dict
from hwlm.errors import ConfigError
from hwlm.formulas import ArchSpec
from hwlm.model.config import PRESETS, ModelConfig, swiglu_hidden


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_maps_to_arch(name: str) -> None:
    cfg = ModelConfig.from_name(name)
    arch = cfg.to_arch()
    assert isinstance(arch, ArchSpec)
    assert (arch.n_layers, arch.n_heads, arch.d_model) == (cfg.n_layer, cfg.n_head, cfg.n_embd)


def test_preset_sizes_match_the_brief() -> None:
    shape = lambda c: (c.n_layer, c.n_head, c.n_embd, c.block_size)  # noqa: E731
    assert shape(ModelConfig.from_name("debug")) == (2, 2, 16, 32)
    assert shape(ModelConfig.from_name("tiny")) == (4, 4, 128, 64)
    assert shape(ModelConfig.from_name("mid")) == (6, 6, 384, 256)
    big = ModelConfig.from_name("gpt2-124m")
    assert shape(big) == (12, 12, 768, 1024) and big.vocab_size == 50304


def test_flavour_defaults_are_resolved() -> None:
    gpt2 = ModelConfig.from_name("tiny")
    assert (gpt2.d_ff, gpt2.bias, gpt2.n_kv_head) == (512, True, 4)
    llama = ModelConfig.from_name("llama-tiny")
    assert (llama.d_ff, llama.bias, llama.n_kv_head) == (swiglu_hidden(128), False, 2)
    arch = llama.to_arch()
    assert (arch.mlp, arch.norm, arch.pos, arch.has_norm_bias) == ("swiglu", "rmsnorm", "rope", False)


def test_overrides_and_round_trip_through_a_dict() -> None:
    cfg = ModelConfig.from_name("debug", vocab_size=300, tie_embeddings=False)
    assert cfg.vocab_size == 300 and not cfg.tie_embeddings
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    assert cfg.with_vocab(1000).vocab_size == 1000


def test_unknown_preset_suggests_a_close_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown model preset 'tiyn': did you mean 'tiny'\? known presets: debug"):
        ModelConfig.from_name("tiyn")


def test_unknown_override_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'n_layers'.*did you mean 'n_layer'"):
        ModelConfig.from_name("debug", n_layers=3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=10, n_head=3), "n_embd 10 is not divisible by n_head 3"),
    (dict(flavour="llama", n_head=4, n_kv_head=3, n_embd=16), "n_head 4 is not divisible by n_kv_head 3"),
    (dict(n_head=4, n_kv_head=2, n_embd=16), "the gpt2 flavour has no grouped-query attention"),
    (dict(n_layer=0), "model n_layer must be a positive integer, got 0"),
    (dict(vocab_size=-5), "model vocab_size must be a positive integer, got -5"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\), got -0.1"),
    (dict(flavour="bert"), "unknown model flavour 'bert'; choose one of gpt2, llama"),
    (dict(flavour="llama", n_embd=18, n_head=6), "rotary positions need an even head size, got 3"),
])
def test_invalid_values_raise_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


def test_config_module_does_not_import_torch() -> None:
    code = "import sys; from hwlm.model import ModelConfig; ModelConfig.from_name('tiny').to_arch(); " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
