"""The call that writes a run's final answer, streamed: the aggregator, or one agent alone.

When a gate lets one agent answer alone and that agent fails before its first token, the next
agent in the gate's ranking answers instead, all within the one deadline (`answer_alone`); a
program agent's reasoning (its program) is no token of the answer, so a failed program falls back too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from mixkit.errors import LayerFailed, ProviderError, Timeout
from mixkit.moa.agents.agent import Agent, CallOptions, CallRecord
from mixkit.moa.agents.program import Reasoning
from mixkit.moa.agents.providers.base import Constraint, Message
from mixkit.moa.events import Emitter
from mixkit.moa.gate.model import GateDecision


@dataclass
class FinalCall:
    """What every final-answer call of a run shares."""

    calls: list[CallRecord]
    max_tokens: int | None
    retries: int
    emit: Emitter
    threads: Callable[[list[str]], int | None]  # local threads for a call of these agents
    temperature: float | None = None  # the run's overrides of the answer's sampling
    top_p: float | None = None
    constraint: Constraint | None = None  # structured output: what this call must write
    output: Any = None  # an engine.output.OutputRun: it makes the final answer when set


async def stream_final(
    agent: Agent, prompt: list[Message], deadline: float, run: FinalCall, *, layer: int, label: str
) -> AsyncGenerator[str, None]:
    """The pieces of `agent`'s answer to `prompt`, as it makes them; a failure is LayerFailed."""
    if run.output is not None:  # structured output or tools: engine/output.py
        pieces = run.output.final(agent, prompt, deadline, run, layer=layer, label=label)
        try:
            async for piece in pieces:
                yield piece
            return
        finally:
            await pieces.aclose()
    record = agent.new_record(layer, label)
    run.calls.append(record)
    sampling = agent.sampling(0, run.max_tokens)
    if run.temperature is not None:
        sampling.temperature = run.temperature
    if run.top_p is not None:
        sampling.top_p = run.top_p
    sampling.constraint = run.constraint
    run.emit.call_start(record)
    on_piece, on_retry = run.emit.call_hooks(record)
    threads = run.threads([agent.name])
    call = CallOptions(deadline, sampling, run.retries, threads, on_piece, on_retry)
    pieces = agent.stream(prompt, record, call)
    try:
        async for piece in pieces:
            yield piece
    except ProviderError as e:
        raise LayerFailed(
            f"the final answer failed: {record.agent} (layer {record.layer}): {record.error}",
            layer=record.layer,
            calls=[record],
            deadline_expired=isinstance(e, Timeout),
        ) from e
    finally:
        await pieces.aclose()
        run.emit.call_end(record)
        run.emit.layer_end(record.layer, int(record.outcome == "ok"), 1)


async def answer_alone(
    agents: dict[str, Agent],
    slots: dict[str, str],
    decision: GateDecision,
    conversation: list[Message],
    deadline: float,
    run: FinalCall,
) -> AsyncGenerator[str, None]:
    """The gate's best agent answers the conversation itself (layer 1); on a failure before its
    first piece, the next distinct agent of the gate's ranking does. `slots`: label -> agent."""
    tried: set[str] = set()
    for label in decision.ranking:
        name = slots[label]
        if name in tried:  # another slot of an agent that already failed
            continue
        tried.add(name)
        started = False
        pieces = stream_final(agents[name], conversation, deadline, run, layer=1, label=label)
        try:
            async for piece in pieces:
                started = started or not isinstance(piece, Reasoning)  # a program is no answer
                yield piece
            return
        except LayerFailed:
            if started or time.monotonic() >= deadline or len(tried) == len(set(slots.values())):
                raise
        finally:
            await pieces.aclose()
