"""Tests for hwlm.config: typed fields, TOML recipes, CLI overrides, unknown keys."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from hwlm.config import add_arguments, from_dict, option, overrides_from_args, resolve, to_dict
from hwlm.errors import ConfigError


@dataclass
class Demo:
    steps: int = option(10, "number of steps")
    lr: float = option(1e-3, "learning rate")
    name: str = option("x", "a name")
    flag: bool = option(False, "a switch")
    mode: Literal["a", "b"] = option("a", "a choice")
    out: Path = option(Path("runs"), "output folder")
    limit: int | None = option(None, "optional limit")
    tags: list[str] = option(help="tags", factory=list)

    def __post_init__(self) -> None:
        if self.lr < 0:
            raise ConfigError(f"lr must be >= 0, got {self.lr}")


def test_precedence_cli_over_file_over_defaults(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('steps = 20\nlr = 0.5\n[other]\nsteps = 99\n')
    cfg = resolve(Demo, file=recipe, overrides={"lr": 0.1})
    assert (cfg.steps, cfg.lr, cfg.name) == (20, 0.1, "x")
    cfg = resolve(Demo, file=recipe, section="other")
    assert cfg.steps == 99


def test_unknown_key_names_close_match() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'stpes'.*did you mean 'steps'"):
        from_dict(Demo, {"stpes": 3})


def test_bad_types_and_values() -> None:
    with pytest.raises(ConfigError, match="'steps' is 'many', which is not a valid int"):
        from_dict(Demo, {"steps": "many"})
    with pytest.raises(ConfigError, match="'steps' is 1.5"):
        from_dict(Demo, {"steps": 1.5})
    with pytest.raises(ConfigError, match="choose one of 'a', 'b'"):
        from_dict(Demo, {"mode": "c"})
    with pytest.raises(ConfigError, match="lr must be >= 0"):
        from_dict(Demo, {"lr": -1})


def test_coercions() -> None:
    cfg = from_dict(Demo, {"steps": "1e3", "flag": "yes", "limit": "none", "tags": "a,b", "out": "o"})
    assert cfg.steps == 1000 and cfg.flag is True and cfg.limit is None
    assert cfg.tags == ["a", "b"] and cfg.out == Path("o")
    assert to_dict(cfg)["out"] == "o"


def test_malformed_and_missing_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(Demo, file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(Demo, file=tmp_path / "nope.toml")


def test_argparse_only_typed_flags_override() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Demo)
    args = parser.parse_args(["--steps", "5", "--flag", "--mode", "b"])
    assert overrides_from_args(args, Demo) == {"steps": "5", "flag": True, "mode": "b"}
    cfg = resolve(Demo, overrides=overrides_from_args(args, Demo))
    assert cfg.steps == 5 and cfg.flag and cfg.mode == "b" and cfg.lr == 1e-3


def test_bool_field_named_no_x_is_refused_at_definition() -> None:
    @dataclass
    class Bad:
        no_cache: bool = False

    with pytest.raises(TypeError, match="name a bool field positively"):
        add_arguments(argparse.ArgumentParser(), Bad)
