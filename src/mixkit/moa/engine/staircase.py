"""Staircase streaming (after Wang et al. 2025): the aggregator starts on the first chunks of the
proposals and goes on as more of them arrive, instead of waiting for the slowest proposer.

    proposers    p1 ████▌    █████▌    ████ done
                 p2 ████▌    ██ done
    aggregator        step 1 ▸▸▸  step 2 ▸▸▸  step 3 ▸▸▸▸▸▸▸▸ (no cap: to the end)

Step 1 waits until every proposer has written `chunk_chars` characters (or ended), then the
aggregator writes up to `step_tokens` tokens from those partial references. Each later step waits
for the next chunk of every running proposer, appends the answer so far (an assistant turn) and
the new text (a user turn: "more of the candidate responses arrived, continue"), and lets the
aggregator go on. The prompt only grows, so a llama.cpp model reuses its KV cache for what it has
already read. Once every proposer has ended, the last step runs without a cap. A proposer that
dies mid-stream keeps the text it had sent; the answer is the concatenation of the steps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator

from mixkit.errors import LayerFailed, ProviderError
from mixkit.moa.agents.agent import Agent, CallOptions, CallRecord
from mixkit.moa.agents.program import ProgramAnswer
from mixkit.moa.agents.providers.base import Message
from mixkit.moa.config import LayerConfig, StaircaseConfig
from mixkit.moa.engine.final import FinalCall, stream_final
from mixkit.moa.engine.layers import LayerRun, describe_failures, labels
from mixkit.moa.engine.prompts import clip, synthesis_messages

STILL_WRITING = " [...still being written]"
CONTINUE = (
    "More of the candidate responses arrived (below). Continue your answer exactly where you "
    "stopped, using them; do not repeat what you already wrote."
)


@dataclasses.dataclass
class _Proposal:
    text: str = ""
    ended: bool = False


async def _propose(agent: Agent, record: CallRecord, slot: int, props: list[_Proposal],
                   changed: asyncio.Event, deadline: float, run: LayerRun) -> None:  # fmt: skip
    """One proposer, streaming into `props[slot]`; it ends (ok or not) with `ended` set."""
    run.emit.call_start(record)
    on_piece, on_retry = run.emit.call_hooks(record)

    def piece(text: str) -> None:
        props[slot].text += text
        changed.set()
        if on_piece is not None:
            on_piece(text)

    try:
        sampling = agent.sampling(slot, run.max_tokens)
        call = CallOptions(deadline, sampling, run.retries, run.threads, piece, on_retry)
        answer = await agent.complete(run.messages, record, call)
        if isinstance(answer, ProgramAnswer):  # its tokens were the program: add what it printed
            piece(f"\n\nThe program ran ({answer.status}) and printed: {answer}\n")
    except ProviderError:
        pass  # the call's record says why; the text it sent so far stays usable
    finally:
        props[slot].ended = True
        changed.set()
        run.emit.call_end(record)


async def _next_chunk(props: list[_Proposal], sent: list[int], chunk: int,
                      changed: asyncio.Event, deadline: float) -> None:  # fmt: skip
    """Wait until every running proposer has `chunk` new characters, or has ended."""
    while not all(p.ended or len(p.text) - s >= chunk for p, s in zip(props, sent, strict=True)):
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return  # go on with what arrived; the proposers hit their own deadline


def _more(props: list[_Proposal], sent: list[int], max_chars: int) -> str:
    blocks = [
        f'<response id="{i}" continued>\n{clip(p.text[s:], max_chars)}'
        + ("" if p.ended else STILL_WRITING)
        + "\n</response>"
        for i, (p, s) in enumerate(zip(props, sent, strict=True), 1)
        if len(p.text) > s
    ]
    return CONTINUE + "\n\n" + "\n\n".join(blocks)


def _first_references(props: list[_Proposal], min_answers: int, records: list[CallRecord],
                      layer_no: int, deadline: float) -> list[str]:  # fmt: skip
    """The first step's references (partial ones marked); LayerFailed if too few proposers
    wrote anything and all have ended."""
    if sum(bool(p.text.strip()) for p in props) < min_answers and all(p.ended for p in props):
        raise LayerFailed(
            f"layer {layer_no}: no proposer answered ({describe_failures(records)})",
            layer=layer_no, calls=[r for r in records if r.outcome != "ok"],
            deadline_expired=time.monotonic() >= deadline,
        )  # fmt: skip
    return [p.text + ("" if p.ended else STILL_WRITING) for p in props if p.text.strip()]


async def staircase(
    agents: dict[str, Agent],
    layer_no: int,
    layer: LayerConfig,
    conversation: list[Message],
    run: LayerRun,
    aggregator: Agent,
    final: FinalCall,
    rule: StaircaseConfig,
    reference_chars: int,
) -> AsyncGenerator[str, None]:
    """Run proposer layer `layer_no` (its prompt is `run.messages`) and stream the aggregator's
    answer from its partial proposals, step by step (see the module docstring)."""
    deadline = time.monotonic() + run.deadline_s
    props = [_Proposal() for _ in layer.agents]
    changed = asyncio.Event()
    records = [
        agents[n].new_record(layer_no, lab)
        for n, lab in zip(layer.agents, labels(layer.agents), strict=True)
    ]
    final.calls.extend(records)
    tasks = [
        asyncio.create_task(_propose(agents[n], r, slot, props, changed, deadline, run))
        for slot, (n, r) in enumerate(zip(layer.agents, records, strict=True))
    ]
    try:
        sent, messages, step = [0] * len(props), list(conversation), 0
        while True:
            await _next_chunk(props, sent, rule.chunk_chars, changed, deadline)
            step += 1
            last = all(p.ended for p in props)
            if step == 1:
                refs = _first_references(props, layer.min_answers, records, layer_no, deadline)
                messages = synthesis_messages(conversation, refs, reference_chars)
            else:
                messages.append({"role": "user", "content": _more(props, sent, reference_chars)})
            sent = [len(p.text) for p in props]
            cap = (
                final.max_tokens
                if last
                else min(rule.step_tokens, final.max_tokens or rule.step_tokens)
            )
            part: list[str] = []
            step_call = dataclasses.replace(final, max_tokens=cap)
            async for piece in stream_final(aggregator, messages, deadline, step_call,
                                            layer=layer_no + 1, label=f"{aggregator.name}@{step}"):  # fmt: skip
                part.append(piece)
                yield piece
            if last:
                return
            messages.append({"role": "assistant", "content": "".join(part)})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
