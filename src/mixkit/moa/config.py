"""Validated Mixture-of-Agents config: agents, proposer layers, the final aggregator.

A config is a TOML file (a built-in preset under `presets/` or the user's own `--config FILE`):

    aggregator = "qwen"            # the agent that writes the final, streamed answer
    deadline_s = 120               # per-call deadline; a layer never waits longer than this

    [agents.qwen]
    provider = "local"             # "local" (embedded GGUF) or "openai" (any compatible URL)
    model = "qwen2.5-coder-0.5b"

    [[layers]]                     # proposer layers, run in order; may be empty
    agents = ["qwen", "qwen", "smollm"]
    quorum = 2                     # proceed as soon as 2 answered (default: wait for all)

Counting the aggregator, a config with L proposer layers has L + 1 layers (moa-lite: 2, moa: 3).
Errors name the file and every bad field, e.g. `moa.toml: agents.qwen.provider: ...` (the
format of every mixkit config, see mixkit/config.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mixkit.config import Presets, read_toml_file, validate
from mixkit.errors import ConfigError
from mixkit.sandbox import Limits

DEFAULT_PRESET = "gated"


PROGRAM_FIELDS = ("retries", "sandbox", "limits")  # what only a program agent may set


class AgentConfig(BaseModel):
    """One agent: a provider, a model, sampling parameters and an optional persona.

    `kind = "program"` (agents/program.py): the agent writes a Python program, which runs in a
    sandbox (mixkit.sandbox, mode `sandbox`, within `limits`), and answers with what it printed;
    after a failed program it writes `retries` more, shown the error."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["local", "openai"]
    model: str = Field(min_length=1)
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8080/v1
    api_key_env: str | None = None  # openai: NAME of the env var holding the key (never the key)
    system: str | None = None  # persona / system prompt
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, le=32768)
    seed: int | None = None  # slot i of a layer samples with seed + i, so repeats differ
    n_ctx: int = Field(4096, ge=256)  # local: context window
    stream_usage: bool = True  # openai: ask for token usage in the stream (stream_options)
    price_in: float | None = Field(None, ge=0)  # USD per million prompt tokens (cost reports, gate)
    price_out: float | None = Field(None, ge=0)  # USD per million completion tokens
    kind: Literal["text", "program"] = "text"  # program: answers with what its program prints
    retries: int = Field(1, ge=0, le=5)  # program: new programs after a failed one
    sandbox: Literal["auto", "bwrap", "unshare", "rlimits-only"] = "auto"  # program: the mode
    limits: Limits = Field(default_factory=Limits)  # program: [agents.NAME.limits]

    @model_validator(mode="after")
    def _check_provider_fields(self) -> AgentConfig:
        if self.provider == "openai" and not self.base_url:
            raise ValueError("provider 'openai' needs base_url (e.g. 'http://127.0.0.1:8080/v1')")
        misplaced = [f for f in PROGRAM_FIELDS if f in self.model_fields_set]
        if self.kind == "text" and misplaced:
            raise ValueError(f"{', '.join(misplaced)}: only for kind = 'program' agents")
        return self


class LayerConfig(BaseModel):
    """A proposer layer: agents (names may repeat, for Self-MoA) that run concurrently."""

    model_config = ConfigDict(extra="forbid")

    agents: list[str] = Field(min_length=1)
    quorum: int | None = Field(None, ge=1)  # answers to wait for; None = all of them
    min_answers: int = Field(1, ge=1)  # fewer than this by the deadline fails the run

    @model_validator(mode="after")
    def _check_counts(self) -> LayerConfig:
        n = len(self.agents)
        if self.quorum is not None and self.quorum > n:
            raise ValueError(f"quorum ({self.quorum}) is more than the layer's {n} agents")
        if self.min_answers > (self.quorum or n):
            raise ValueError(
                f"min_answers ({self.min_answers}) is more than quorum ({self.quorum or n})"
            )
        return self


class GateConfig(BaseModel):
    """Sparse agent selection (see gate.py): the first layer's slots are the candidates."""

    model_config = ConfigDict(extra="forbid")

    path: str = "default"  # a gate file, or the name of a packaged gate
    k: int = Field(3, ge=1)  # slots consulted when mixing
    cost_weight: float = Field(0.0, ge=0.0)  # accuracy given up per unit of relative cost
    latency_weight: float = Field(1.0, ge=0.0)  # relative latency's share of that cost
    combine: Literal["vote", "synthesize"] = "vote"  # majority vote, or the aggregator LLM
    temperature: float = Field(0.05, gt=0.0)  # softmax temperature of the renormalised weights
    min_weight: float = Field(0.0, ge=0.0, lt=1.0)  # synthesize: drop proposals weighted below
    noise: float = Field(0.0, ge=0.0)  # exploration noise on utilities (collecting traces)
    votes: bool = False  # the gate's vote candidates compete: an agent asked until it agrees


class EarlyExitConfig(BaseModel):
    """Stop a layer once enough arrived proposals agree; skip the remaining layers."""

    model_config = ConfigDict(extra="forbid")

    min_agree: int = Field(2, ge=2)  # proposals with the same final answer (or similar text)
    similarity: float = Field(0.7, gt=0.0, le=1.0)  # free text: word-set Jaccard at least this


class StaircaseConfig(BaseModel):
    """Staircase streaming: the aggregator starts on the proposals' first chunks (staircase.py)."""

    model_config = ConfigDict(extra="forbid")

    chunk_chars: int = Field(160, ge=1)  # new characters per proposer before each step
    step_tokens: int = Field(24, ge=1)  # tokens the aggregator writes per step (the last: no cap)


class MoAConfig(BaseModel):
    """A whole Mixture-of-Agents: named agents, proposer layers, and the final aggregator."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    description: str = ""
    agents: dict[str, AgentConfig] = Field(min_length=1)
    layers: list[LayerConfig] = Field(default_factory=list)
    aggregator: str
    deadline_s: float = Field(300.0, gt=0)
    retries: int = Field(2, ge=0, le=10)  # extra attempts after a retryable failure
    reference_chars: int = Field(1500, ge=50)  # budget per reference in the synthesis prompt
    gate: GateConfig | None = None  # [gate]: consult only the agents that help this prompt
    early_exit: EarlyExitConfig | None = None  # [early_exit]: stop when proposals agree
    staircase: StaircaseConfig | None = None  # [staircase]: aggregate while proposers still write

    @model_validator(mode="after")
    def _check_names(self) -> MoAConfig:
        known = ", ".join(sorted(self.agents))
        if self.aggregator not in self.agents:
            raise ValueError(f"aggregator: '{self.aggregator}' is not an agent (known: {known})")
        for i, layer in enumerate(self.layers):
            for name in layer.agents:
                if name not in self.agents:
                    raise ValueError(f"layers.{i}.agents: unknown agent '{name}' (known: {known})")
        if self.gate is not None and not self.layers:
            raise ValueError("gate: a gate chooses among the first layer's agents; add [[layers]]")
        if self.gate is not None and self.gate.k > len(self.layers[0].agents):
            raise ValueError(
                f"gate.k ({self.gate.k}) is more than the first layer's {len(self.layers[0].agents)} agents"
            )
        return self

    @property
    def num_layers(self) -> int:
        """Layers counting the final aggregator (moa-lite = 2)."""
        return len(self.layers) + 1


PRESETS = Presets("mixkit.moa")


def parse_config(data: dict[str, Any], source: str = "<config>") -> MoAConfig:
    """Validate a config dict; errors name `source` and every bad field."""
    return validate(MoAConfig, data, source)


def load_config(path: str | Path) -> MoAConfig:
    """Load a user's TOML config file (its name defaults to the file's stem)."""
    data = read_toml_file(path)
    data.setdefault("name", Path(path).stem)
    return parse_config(data, str(path))


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return PRESETS.names()


def load_preset(name: str) -> MoAConfig:
    """Load a built-in preset by name (see `list_presets()`)."""
    return parse_config(PRESETS.load(name), f"preset '{name}'")


def resolve(preset: str | None = None, config: str | Path | MoAConfig | None = None) -> MoAConfig:
    """The config for a run: an explicit config wins over a preset; neither means the default."""
    if preset is not None and config is not None:
        raise ConfigError("give --preset or --config, not both")
    if isinstance(config, MoAConfig):
        return config
    if config is not None:
        return load_config(config)
    return load_preset(preset or DEFAULT_PRESET)
