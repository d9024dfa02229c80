"""The result of a run (Answer), the stream that produces it (AnswerStream), and its timing."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from mixkit.moa.agents.agent import CallRecord
from mixkit.moa.agents.providers.base import Message


class CallTotals:
    """Sums over a run's calls, for a run being made (Answer) or read back (logs.LoggedRun)."""

    calls: list[CallRecord]

    @property
    def cost_usd(self) -> float | None:
        """The run's cost from the agents' declared prices; None if no call was priced."""
        costs = [c.cost_usd for c in self.calls if c.cost_usd is not None]
        return sum(costs) if costs else None

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens or 0 for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens or 0 for c in self.calls)


@dataclass
class Answer(CallTotals):
    """The result of one run: the answer and the trace of every call."""

    answer: str
    run_id: str
    conversation_id: str
    preset: str
    messages: list[Message]  # the conversation the run answered
    calls: list[CallRecord] = field(default_factory=list)
    wall_s: float = 0.0
    critical_path_s: float = 0.0  # sum over layers of the slowest call
    ttft_s: float | None = None  # run start -> first streamed piece (a program's included)
    started_at: float = 0.0  # unix time
    outcome: str = "ok"  # ok | error | cancelled
    error: str | None = None  # why it failed, when it did
    gate: dict[str, Any] | None = None  # the gate's decision (GateDecision.to_dict()), if gated
    early_exit: dict[str, Any] | None = None  # {"layer", "agreed", "answers", "skipped_layers"}
    deadline_s: float | None = None  # the per-call deadline this run used
    # structured output (engine/output.py): what was asked, votes, validation, repairs
    structured: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # the answer's calls, OpenAI's shape
    reasoning: str | None = None  # streamed before the answer: a program agent's program

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of `mixkit ask --json`."""
        return {
            "answer": self.answer,
            "run_id": self.run_id,
            "conversation_id": self.conversation_id,
            "preset": self.preset,
            "wall_s": self.wall_s,
            "critical_path_s": self.critical_path_s,
            "ttft_s": self.ttft_s,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "gate": self.gate,
            "early_exit": self.early_exit,
            "deadline_s": self.deadline_s,
            "structured": self.structured,
            "tool_calls": self.tool_calls,
            "reasoning": self.reasoning,
            "trace": [c.to_dict() for c in self.calls],
        }


class AnswerStream:
    """Async iterator over the final answer's text pieces; `.result` (an Answer) once it ends."""

    def __init__(self, pieces: AsyncGenerator[str, None]):
        self._pieces = pieces
        self.result: Answer | None = None

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> str:
        return await self._pieces.__anext__()

    async def aclose(self) -> None:
        await self._pieces.aclose()

    async def collect(self) -> Answer:
        """Consume the stream; return the Answer."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result


def critical_path(calls: list[CallRecord]) -> float:
    """Sum over layers of the slowest call: the least time any engine could take."""
    slowest: dict[int, float] = {}
    for c in calls:
        slowest[c.layer] = max(slowest.get(c.layer, 0.0), c.latency_s or 0.0)
    return sum(slowest.values())
