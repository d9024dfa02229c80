"""The call that writes a run's final answer, streamed: the aggregator, or one agent alone.

When a gate lets one agent answer alone and that agent fails before its first token, the next
agent in the gate's ranking answers instead, all within the one deadline (`answer_alone`); a
program agent's reasoning (its program) is no token of the answer, so a failed program falls back too.
When the gate chose a vote of that agent ("votes"), it answers again and again, one call after
another, until `agree` of its answers agree or n model calls are spent, and their majority is
the answer (`vote_alone`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from mixkit.errors import LayerFailed, ProviderError, Timeout
from mixkit.moa.agents.agent import Agent, CallOptions, CallRecord, model_calls
from mixkit.moa.agents.program import Reasoning
from mixkit.moa.agents.providers.base import Constraint, Message
from mixkit.moa.answers import final_answer
from mixkit.moa.events import Emitter
from mixkit.moa.gate.model import GateDecision
from mixkit.moa.gate.plan import pick_by_vote


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
    agent: Agent,
    prompt: list[Message],
    deadline: float,
    run: FinalCall,
    *,
    layer: int,
    label: str,
    slot: int = 0,
    program_retries: int | None = None,
) -> AsyncGenerator[str, None]:
    """The pieces of `agent`'s answer to `prompt`, as it makes them; a failure is LayerFailed.
    `slot`: which of several samples this is (each slot samples with its own seed);
    `program_retries`: overrides a program agent's `retries`."""
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
    sampling = agent.sampling(slot, run.max_tokens)
    if run.temperature is not None:
        sampling.temperature = run.temperature
    if run.top_p is not None:
        sampling.top_p = run.top_p
    sampling.constraint = run.constraint
    run.emit.call_start(record)
    on_piece, on_retry = run.emit.call_hooks(record)
    threads = run.threads([agent.name])
    call = CallOptions(
        deadline, sampling, run.retries, threads, on_piece, on_retry, program_retries
    )
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


async def vote_alone(
    agent: Agent,
    conversation: list[Message],
    deadline: float,
    run: FinalCall,
    *,
    label: str,
    votes: int,
    agree: int,
) -> AsyncGenerator[str, None]:
    """`agent` answers again and again, one call after another (each its own sample), until
    `agree` of its final answers agree (`agree` = 1: until it answers at all) or `votes` model
    calls are spent; the plain majority of the answers given wins (ties: the earliest;
    `plan.pick_by_vote`). A program agent retries a failed program with its error shown, as it
    does alone, within that budget; a call that fails is no vote.
    Everything streams as Reasoning while the vote goes on (a program, what it printed, a text
    agent's words); the winning answer comes last. LayerFailed when none answered."""
    answers: list[str] = []
    keys: list[str | None] = []
    failure: LayerFailed | None = None
    spent, i = 0, 0
    while spent < votes and time.monotonic() < deadline:
        i += 1
        retries = min(agent.config.retries, votes - spent - 1)
        pieces = stream_final(
            agent, conversation, deadline, run, layer=1, label=f"{label}#{i}", slot=i - 1,
            program_retries=retries,
        )  # fmt: skip
        said: list[str] = []
        try:
            async for piece in pieces:
                if not isinstance(piece, Reasoning):
                    said.append(piece)
                    if agent.config.kind == "program":
                        continue  # its Reasoning already said what the program printed
                yield Reasoning(piece)
        except LayerFailed as e:
            failure = e
            continue
        finally:
            await pieces.aclose()
            spent += model_calls(run.calls[-1:])  # a program agent's: one per program
        text = said[0] if len(said) == 1 else "".join(said)  # keeps a ProgramAnswer whole
        answers.append(text)
        keys.append(final_answer(text))
        if keys[-1] is not None and keys.count(keys[-1]) >= agree:
            break
        if spent < votes:
            yield Reasoning(f"\n\n(answer {len(answers)}: {keys[-1] or 'none'}; asking again)\n\n")
    if not answers:
        assert failure is not None
        raise failure
    best = pick_by_vote(answers, [1.0] * len(answers))
    winner = keys[best]
    count = keys.count(winner) if winner is not None else 1
    if agree > 1 or len(answers) > 1:
        yield Reasoning(
            f"\n\n(the vote: {winner or 'none'}, {count} of {len(answers)} answers)\n\n"
        )
    yield answers[best]


async def answer_alone(
    agents: dict[str, Agent],
    slots: dict[str, str],
    decision: GateDecision,
    conversation: list[Message],
    deadline: float,
    run: FinalCall,
) -> AsyncGenerator[str, None]:
    """The gate's best agent answers the conversation itself (layer 1); on a failure before its
    first piece, the next distinct agent of the gate's ranking does. `slots`: label -> agent.
    The gate's "votes": the first agent answers until its answers agree (`vote_alone`); not
    with structured output or tools, where one call makes the answer."""
    tried: set[str] = set()
    for label in decision.ranking:
        name = slots[label]
        if name in tried:  # another slot of an agent that already failed
            continue
        tried.add(name)
        started = False
        if decision.strategy == "votes" and len(tried) == 1 and run.output is None:
            pieces = vote_alone(
                agents[name], conversation, deadline, run,
                label=label, votes=decision.votes, agree=decision.agree,
            )  # fmt: skip
        else:
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
