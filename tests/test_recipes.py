"""Every shipped recipe (src/hwlm/recipes/*.toml) loads by name and trains for one step.

The recipes' own budgets (time, tokens, device) are replaced by one CPU step on the tiny corpus; the
model shape, optimizer and precision settings are the recipe's own, so a key a stage no longer knows,
or a preset that no longer exists, fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hwlm.config import builtin_recipes, load_toml, recipe_path, resolve
from hwlm.data.config import PrepareConfig
from hwlm.errors import ConfigError
from hwlm.model.config import ModelConfig
from hwlm.train.config import TrainConfig

LM_RECIPES = ["quickstart", "mid-cpu", "gpt2-124m-gpu", "llama-tiny"]


def test_the_language_model_recipes_ship() -> None:
    assert set(LM_RECIPES) <= set(builtin_recipes())


def test_unknown_recipe_names_the_builtin_ones() -> None:
    with pytest.raises(ConfigError, match="built-in recipes: .*mid-cpu"):
        recipe_path("no-such-recipe")


def test_a_file_path_wins_over_a_builtin_name(tmp_path: Path) -> None:
    own = tmp_path / "quickstart.toml"
    own.write_text("[train]\nmodel = 'debug'\n")
    assert load_toml(own)["train"]["model"] == "debug"


@pytest.mark.slow
@pytest.mark.parametrize("name", LM_RECIPES)
def test_recipe_trains_one_step(name: str, tiny_data: Path, tmp_path: Path) -> None:
    from hwlm.train import train

    resolve(PrepareConfig, file=name, section="prepare", overrides={"out": tmp_path / "data"})
    overrides = dict(data=tiny_data, out=tmp_path / "run", max_steps=1, max_tokens=None, time_budget=None,
                     batch_size=1, grad_accum=1, device="cpu", precision="fp32", compile=False, progress=False,
                     tensorboard=False, eval_interval=0, eval_batches=1, peak_flops=1e9)
    cfg = resolve(TrainConfig, file=name, section="train", overrides=overrides)
    table = load_toml(name).get("model", {})
    block = 64  # the tiny corpus holds fewer tokens than gpt2-124m's 1024-token context
    model_cfg = ModelConfig.from_name(cfg.model, **{**table, "vocab_size": 300, "block_size": block})
    result = train(cfg, model_cfg)
    assert result.steps == 1
