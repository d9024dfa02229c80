"""Mixture-of-Agents over LLMs (Wang et al. 2024): layers of agents, then a streamed synthesis.

    from mixkit import moa
    answer = moa.ask("Why is the sky blue?", preset="self-moa", on_token=print)
    print(answer.answer, answer.critical_path_s, [c.agent for c in answer.calls])

    async for piece in moa.stream("Why is the sky blue?"):   # async streaming
        print(piece, end="")

    moa.ask("Why?", on_event=lambda e: print(e.type, e.layer, e.agent))   # watch the run
    moa.logs.recent_runs(3)                                                # read the run log

A program agent's program streams before its answer, as `Reasoning` pieces (a str subclass):
`isinstance(piece, moa.Reasoning)` tells them apart; `Answer.answer` holds only the answer.

This package imports nothing from `mixkit.moe` and touches no network or model at import.
"""

from mixkit.errors import LayerFailed, ProviderError, RateLimited, Timeout
from mixkit.moa import logs
from mixkit.moa.agents.agent import Agent, CallOptions, CallRecord
from mixkit.moa.agents.program import (
    ProgramAgent,
    ProgramAnswer,
    ProgramFailed,
    Reasoning,
    program_messages,
)
from mixkit.moa.agents.providers.base import Message
from mixkit.moa.config import (
    DEFAULT_PRESET,
    AgentConfig,
    LayerConfig,
    MoAConfig,
    list_presets,
    load_config,
    load_preset,
    parse_config,
    resolve,
)
from mixkit.moa.engine.output import check_spec
from mixkit.moa.engine.pipeline import MoA, RunOptions, ask, stream
from mixkit.moa.engine.prompts import synthesis_messages
from mixkit.moa.engine.result import Answer, AnswerStream, critical_path
from mixkit.moa.engine.structured import OutputInvalid, OutputSpec, OutputSpecError
from mixkit.moa.events import EVENT_TYPES, Emitter, EventHandler, RunEvent
from mixkit.moa.logs import Conversation, LayerSummary, LoggedRun, LogSink, SQLiteLog

__all__ = [
    "DEFAULT_PRESET",
    "EVENT_TYPES",
    "Agent",
    "AgentConfig",
    "Answer",
    "AnswerStream",
    "CallOptions",
    "CallRecord",
    "Conversation",
    "Emitter",
    "EventHandler",
    "LayerConfig",
    "LayerFailed",
    "LayerSummary",
    "LogSink",
    "LoggedRun",
    "Message",
    "MoA",
    "MoAConfig",
    "OutputInvalid",
    "OutputSpec",
    "OutputSpecError",
    "ProgramAgent",
    "ProgramAnswer",
    "ProgramFailed",
    "ProviderError",
    "RateLimited",
    "Reasoning",
    "RunEvent",
    "RunOptions",
    "SQLiteLog",
    "Timeout",
    "ask",
    "check_spec",
    "critical_path",
    "list_presets",
    "load_config",
    "load_preset",
    "logs",
    "parse_config",
    "program_messages",
    "resolve",
    "stream",
    "synthesis_messages",
]
