"""Stage configs: dataclasses with a help text per field, TOML recipes, CLI overrides.

Each stage declares one dataclass whose fields use :func:`option` so that every
field carries a one-line help text (it becomes ``--help``). Precedence is
CLI flag > TOML file > dataclass default. Unknown keys are errors that list the
valid ones. Validation of *values* lives in each dataclass's ``__post_init__``,
which raises :class:`~hwlm.errors.ConfigError`.

    @dataclass
    class PrepareConfig:
        vocab_size: int = option(4096, "size of the BPE vocabulary")

    cfg = resolve(PrepareConfig, file="recipe.toml", overrides={"vocab_size": 512})
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from hwlm.errors import ConfigError

__all__ = [
    "option",
    "from_dict",
    "to_dict",
    "load_toml",
    "builtin_recipes",
    "recipe_path",
    "resolve",
    "add_arguments",
    "overrides_from_args",
]

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, cli: bool = True) -> Any:
    """A dataclass field with a help text. ``factory`` for mutable defaults; ``cli=False`` hides it from the CLI."""
    meta = {"help": help, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert a TOML/CLI value to the field's type, or raise ConfigError naming the field."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{name}' may not be empty")
    if optional and isinstance(value, str) and value.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                value = value.replace("_", "")
                f = float(value)
                if not f.is_integer():
                    raise ValueError
                return int(f)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            return str(value)
        if base is Path:
            return Path(value)
        if origin is typing.Literal:
            if value not in typing.get_args(base):
                choices = ", ".join(repr(a) for a in typing.get_args(base))
                raise ConfigError(f"config key '{name}' is {value!r}; choose one of {choices}")
            return value
        if origin in (list, tuple):
            (item,) = typing.get_args(base)[:1] or (str,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""]
            items = [_coerce(name, v, item) for v in value]
            return items if origin is list else tuple(items)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        tname = getattr(base, "__name__", str(base))
        raise ConfigError(f"config key '{name}' is {value!r}, which is not a valid {tname}") from None
    return value


def _check_keys(cls: type, keys: typing.Iterable[str], where: str) -> None:
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key '{key}' in {where}{hint}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a plain dict, rejecting unknown keys and coercing types."""
    _check_keys(cls, data.keys(), where)
    hints = _hints(cls)
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-ready data (Paths become strings)."""
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        return v
    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


RECIPES_DIR = Path(__file__).parent / "recipes"


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped in ``hwlm/recipes/`` (``--config NAME`` finds them)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_path(path: str | Path) -> Path:
    """``path`` itself when it exists; else a built-in recipe of that name (``mid-cpu`` or ``mid-cpu.toml``).

    A name that is neither is a ConfigError listing the built-in recipes.
    """
    path = Path(path)
    if path.exists() or path.parent != Path("."):
        return path
    builtin = RECIPES_DIR / (path.name if path.suffix == ".toml" else path.name + ".toml")
    if builtin.is_file():
        return builtin
    raise ConfigError(f"config file {path} does not exist and is no built-in recipe; built-in recipes: "
                      f"{', '.join(builtin_recipes())}")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML recipe (a file, or a built-in recipe's name); a missing or malformed file is a ConfigError."""
    path = recipe_path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def resolve(cls: type[T], file: str | Path | None = None, overrides: dict[str, Any] | None = None,
            section: str | None = None) -> T:
    """defaults < TOML ``file`` (optionally one ``[section]`` of it) < ``overrides``."""
    data: dict[str, Any] = {}
    if file is not None:
        raw = load_toml(file)
        if section is not None:
            raw = raw.get(section, {})
            if not isinstance(raw, dict):
                raise ConfigError(f"[{section}] in {file} must be a table")
        else:
            # Top-level tables belong to other stages of a shared recipe ([model], [train], ...).
            raw = {k: v for k, v in raw.items() if not isinstance(v, dict)}
        data.update(raw)
        _check_keys(cls, data.keys(), str(file))
    if overrides:
        data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, data)


def _flag(name: str, prefix: str) -> str:
    return "--" + prefix + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                  skip: typing.Iterable[str] = ()) -> None:
    """Add one ``--flag`` per CLI-visible field of ``cls``; defaults are suppressed so that
    only flags the user typed override the file and the dataclass defaults."""
    hints = _hints(cls)
    skip = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if default not in (None, "", [], ()):
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": prefix.replace("-", "_") + f.name, "default": argparse.SUPPRESS,
                                  "help": help_text}
        if tp is bool:
            if f.name.startswith("no_"):  # argparse would read --no-x as the negation of --x
                raise TypeError(f"{cls.__name__}.{f.name}: name a bool field positively "
                                f"({f.name[3:]}=False), its flag pair is --{f.name[3:].replace('_', '-')}/--no-...")
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = f.name.upper()
            if typing.get_origin(tp) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(tp))
                kwargs["metavar"] = "{" + ",".join(map(str, typing.get_args(tp))) + "}"
        parser.add_argument(_flag(f.name, prefix), **kwargs)


def overrides_from_args(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line, as a dict."""
    out = {}
    p = prefix.replace("-", "_")
    for f in dataclasses.fields(cls):
        if hasattr(args, p + f.name):
            out[f.name] = getattr(args, p + f.name)
    return out
