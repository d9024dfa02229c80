"""One proposer layer: its agents run concurrently; it ends at quorum, or at the deadline.

A layer proceeds as soon as `quorum` agents have answered (the rest are cancelled), or at the
deadline with whatever answered. With fewer than `min_answers` it raises LayerFailed, naming each
agent that failed and why, and saying whether time ran out.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from mixkit.errors import LayerFailed, ProviderError, Timeout
from mixkit.moa.agents.agent import Agent, CallOptions, CallRecord
from mixkit.moa.agents.providers.base import Constraint, Message, Sampling
from mixkit.moa.answers import agreement
from mixkit.moa.config import EarlyExitConfig, LayerConfig
from mixkit.moa.events import Emitter

GRACE_S = 2.0  # agents enforce the deadline themselves; this only guards against a stuck task


def labels(names: list[str]) -> list[str]:
    """Agent names, with '#1', '#2' ... where a layer repeats an agent (Self-MoA)."""
    totals, seen = Counter(names), Counter[str]()
    out = []
    for name in names:
        seen[name] += 1
        out.append(f"{name}#{seen[name]}" if totals[name] > 1 else name)
    return out


def describe_failures(records: list[CallRecord]) -> str:
    return "; ".join(f"{r.agent}: {r.error or r.outcome}" for r in records)


@dataclass
class LayerRun:
    """How to run a layer's calls: shared by every call of the layer."""

    messages: list[Message]
    max_tokens: int | None
    deadline_s: float
    retries: int
    threads: int | None  # per local call (the core budget split between them)
    emit: Emitter
    constraint: Constraint | None = None  # structured output / tools (engine/output.py)


async def call_proposer(
    agent: Agent, record: CallRecord, sampling: Sampling, deadline: float, run: LayerRun
) -> str:
    """One proposer call, framed by its call_start / call_end events."""
    run.emit.call_start(record)
    on_piece, on_retry = run.emit.call_hooks(record)
    try:
        call = CallOptions(deadline, sampling, run.retries, run.threads, on_piece, on_retry)
        return await agent.complete(run.messages, record, call)
    finally:
        run.emit.call_end(record)


async def run_layer(
    agents: dict[str, Agent],
    layer_no: int,
    layer: LayerConfig,
    calls: list[CallRecord],
    run: LayerRun,
    slot_labels: list[str] | None = None,
    agree: EarlyExitConfig | None = None,
) -> tuple[list[str], int | None]:
    """Run proposer layer `layer_no`; append its CallRecords to `calls`. Return the answers in
    slot order, and, when `agree` (early exit) stopped the layer because enough answers agreed,
    the index of the agreed answer. Raises LayerFailed with fewer than `layer.min_answers`."""
    deadline = time.monotonic() + run.deadline_s
    tasks: dict[asyncio.Task[str], tuple[int, CallRecord]] = {}
    names = slot_labels or labels(layer.agents)
    for slot, (name, label) in enumerate(zip(layer.agents, names, strict=True)):
        agent = agents[name]
        record = agent.new_record(layer_no, label)
        calls.append(record)
        sampling = agent.sampling(slot, run.max_tokens)
        sampling.constraint = run.constraint
        coro = call_proposer(agent, record, sampling, deadline, run)
        tasks[asyncio.create_task(coro)] = (slot, record)
    answers, timed_out = await _until_quorum(tasks, layer.quorum or len(tasks), deadline, agree)
    run.emit.layer_end(layer_no, len(answers), len(tasks))
    if len(answers) < layer.min_answers:
        failed = [r for slot, r in tasks.values() if slot not in answers]
        raise LayerFailed(
            f"layer {layer_no}: {len(answers)} of {len(tasks)} agents answered, "
            f"{layer.min_answers} needed ({describe_failures(failed)})",
            layer=layer_no,
            calls=[r for r in failed if r.outcome != "ok"],
            deadline_expired=all(slot in timed_out for slot, r in tasks.values() if r in failed),
        )
    ordered = [answers[slot] for slot in sorted(answers)]
    agreed = agreement(ordered, agree) if agree is not None else None
    return ordered, agreed


async def _until_quorum(
    tasks: dict[asyncio.Task[str], tuple[int, CallRecord]],
    quorum: int,
    deadline: float,
    agree: EarlyExitConfig | None = None,
) -> tuple[dict[int, str], set[int]]:
    """Wait for `quorum` answers, enough agreeing answers (`agree`), or the deadline; cancel the
    rest. Returns the answers by slot, and the slots that ran out of time (passed their
    deadline, or cut off by the layer's)."""
    answers: dict[int, str] = {}
    timed_out: set[int] = set()
    pending = set(tasks)
    try:
        while pending and len(answers) < quorum:
            if (
                agree is not None
                and agreement([answers[k] for k in sorted(answers)], agree) is not None
            ):
                break  # early exit: the answers so far agree
            timeout = max(0.0, deadline - time.monotonic()) + GRACE_S
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                timed_out |= {tasks[t][0] for t in pending}
                break
            for task in done:
                error = task.exception()
                if error is None:
                    answers[tasks[task][0]] = task.result()
                elif not isinstance(error, ProviderError):
                    raise error  # a config mistake or a bug, not a failed agent: never swallow it
                elif isinstance(error, Timeout):
                    timed_out.add(tasks[task][0])
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return answers, timed_out
