"""Mixture-of-Agents over LLMs (Wang et al. 2024): layers of agents, then a streamed synthesis.

    from mixkit import moa
    answer = moa.ask("Why is the sky blue?", preset="self-moa", on_token=print)
    print(answer.answer, answer.critical_path_s, [c.agent for c in answer.calls])

    async for piece in moa.stream("Why is the sky blue?"):   # async streaming
        print(piece, end="")

This package imports nothing from `mixkit.moe` and touches no network or model at import.
"""

from mixkit.moa.agents import Agent, CallRecord
from mixkit.moa.config import (
    DEFAULT_PRESET,
    AgentConfig,
    LayerConfig,
    MoAConfig,
    list_presets,
    load_config,
    load_preset,
    parse_config,
)
from mixkit.moa.pipeline import Answer, AnswerStream, MoA, ask, critical_path, stream
from mixkit.moa.prompts import synthesis_messages

__all__ = [
    "DEFAULT_PRESET",
    "Agent",
    "AgentConfig",
    "Answer",
    "AnswerStream",
    "CallRecord",
    "LayerConfig",
    "MoA",
    "MoAConfig",
    "ask",
    "critical_path",
    "list_presets",
    "load_config",
    "load_preset",
    "parse_config",
    "stream",
    "synthesis_messages",
]
