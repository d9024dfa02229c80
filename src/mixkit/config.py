"""Config files, shared by `mixkit.moa` and `mixkit.train`: TOML, presets, one error format.

A config is a TOML file validated by a pydantic model. Both packages read them the same way:

    raw = read_toml_file(path)                 # or PRESETS.load(name) for a built-in preset
    cfg = validate(MoAConfig, raw, str(path))  # ConfigError naming every bad field

An error is one line that starts with its source (a file path, or `preset 'tiny'`) and names each
bad field by its dotted path, with the value it got:

    bad.toml: agents.b.temperature: Input should be less than or equal to 2 (got 3.0); layers.0: ...
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mixkit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

M = TypeVar("M", bound=BaseModel)


def read_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error is a ConfigError naming `source`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None


def read_toml_file(path: str | Path) -> dict[str, Any]:
    """Read a user's TOML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (check --config)")
    return read_toml(path.read_text("utf-8"), str(path))


class Presets:
    """The built-in presets of a package: one `NAME.toml` each in its `presets/` folder."""

    def __init__(self, package: str):
        self.package = package

    def names(self) -> list[str]:
        files = (resources.files(self.package) / "presets").iterdir()
        return sorted(f.name[:-5] for f in files if f.name.endswith(".toml"))

    def load(self, name: str) -> dict[str, Any]:
        """The preset's raw TOML table, `name` set to the preset's name unless it has one."""
        file = resources.files(self.package) / "presets" / f"{name}.toml"
        if not file.is_file():
            raise ConfigError(
                f"unknown preset '{name}' (choose from: {', '.join(self.names())}, "
                "or pass --config FILE)"
            )
        raw = read_toml(file.read_text("utf-8"), f"preset '{name}'")
        raw.setdefault("name", name)
        return raw


def format_validation_error(
    err: ValidationError, source: str, union_tags: Iterable[str] = ()
) -> str:
    """Every bad field of `err`, by dotted path, on one line that starts with `source`.

    `union_tags` are the tags of discriminated unions, which pydantic puts in the path (e.g.
    `model.lstm.d_model`); they are dropped so that the path reads as the TOML does.
    """
    tags = set(union_tags)
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"] if p not in tags)
        msg = e["msg"].removeprefix("Value error, ")  # whole-model checks name fields in msg
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        value = e.get("input")
        got = "" if isinstance(value, dict) or e["type"] == "missing" else f" (got {value!r})"
        parts.append(f"{field + ': ' if field else ''}{msg}{got}")
    return f"{source}: " + "; ".join(parts)


def validate(model: type[M], raw: dict[str, Any], source: str, union_tags: Iterable[str] = ()) -> M:
    """`model` validated from `raw`; a ConfigError naming `source` and every bad field."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, union_tags)) from None


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, tables merged recursively (a config extending a preset)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `KEY=VALUE` overrides (`--set train.steps=500`): VALUE is TOML, or a bare word."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=500")
        key, text = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word is a string: --set model.moe.router=topk
        path = key.strip().split(".")
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key.strip()}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def read_json_lines(
    path: str | Path, what: str = "file", expect: str = "a JSON object", hint: str = ""
) -> list[tuple[str, dict[str, Any]]]:
    """The objects of a JSON-lines file, each with its `path:line` for messages; blank lines are
    skipped. A missing or unreadable file, bad JSON or a line that is not an object is a
    ConfigError naming the file (`what` says which kind) or the line (`expect` says what it
    should hold; `hint`, what to check when the file is missing)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found{f' ({hint})' if hint else ''}") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise ConfigError(f"{path}: not a readable UTF-8 text file ({e})") from None
    out = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        out.append((where, json_object(line, where, expect)))
    return out


def json_object(text: str, where: str, expect: str = "a JSON object") -> dict[str, Any]:
    """`text` parsed as one JSON object; otherwise a ConfigError naming `where` (a file, a line)
    and what was expected."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected {expect}")
    return obj
