"""TrainConfig validation, the learning-rate schedule and AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from hwlm.config import resolve
from hwlm.errors import ConfigError
from hwlm.model import ModelConfig, Transformer
from hwlm.train.config import TrainConfig
from hwlm.train.optim import build_optimizer, lr_at, param_groups


@pytest.mark.parametrize("field,value,message", [
    ("lr", -1.0, "train config 'lr' is -1.0; it must be more than zero"),
    ("batch_size", 0, "train config 'batch_size' is 0; it must be more than zero"),
    ("grad_clip", -0.5, "train config 'grad_clip' is -0.5; it must be zero or more"),
    ("keep_checkpoints", 1, "keep at least 2"),
    ("min_lr", 1.0, "'min_lr' (1.0) is above 'lr'"),
    ("betas", (0.9, 1.5), "give two numbers in [0, 1)"),
])
def test_bad_values_raise_one_line(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        TrainConfig(**{field: value})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_recipe_is_named(tmp_path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("[train]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        resolve(TrainConfig, file=recipe, section="train")


def test_betas_from_cli_text() -> None:
    cfg = resolve(TrainConfig, overrides={"betas": "0.8,0.99"})
    assert cfg.betas == (0.8, 0.99)


def test_schedule_warmup_peak_and_floor() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup=10, max_steps=110)
    lrs = [lr_at(s, cfg, s / 110, 110) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-4)            # 1/10 of the way up
    assert lrs[9] == pytest.approx(1e-3)            # warm-up ends at the peak
    assert lrs[10] == pytest.approx(1e-3)           # cosine starts at the peak
    assert lrs[60] == pytest.approx(5.5e-4)         # half-way: the mean of peak and floor
    assert lrs[110] == pytest.approx(1e-4)          # the floor at the horizon
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay


def test_schedule_by_time_fraction() -> None:
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup=0, time_budget=10.0)
    assert lr_at(5, cfg, 0.5) == pytest.approx(0.5)
    assert lr_at(7, cfg, 1.0) == pytest.approx(0.0)
    assert math.isclose(lr_at(0, cfg, 0.0), 1.0)


def test_param_groups_decay_linear_weights_only() -> None:
    model = Transformer(ModelConfig.from_name("debug"))
    decay, no_decay = param_groups(model, 0.1)
    decay_ids = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decay_ids}
    assert names and all(n.endswith(".weight") and ".ln" not in n for n in names)
    assert id(model.wte.weight) not in decay_ids      # tied embedding / head: no decay
    assert all(p.dim() == 2 for p in decay["params"])
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == model.num_params()                # every parameter exactly once


def test_fused_adamw_on_cpu() -> None:
    model = Transformer(ModelConfig.from_name("debug"))
    opt, text = build_optimizer(model, TrainConfig(), "cpu")
    assert opt.defaults["fused"] is True and "fused" in text
    x = torch.randint(0, 512, (2, 8))
    _, loss = model(x, x)
    loss.backward()
    opt.step()  # the fused CPU kernel runs


def test_config_imports_without_torch() -> None:
    import subprocess
    import sys
    code = ("import sys; from hwlm.train import TrainConfig; import hwlm.evaluate, hwlm.quickstart; "
            "TrainConfig(max_steps=1); assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names() -> None:
    import hwlm.train
    for name in hwlm.train.__all__:
        assert getattr(hwlm.train, name) is not None
