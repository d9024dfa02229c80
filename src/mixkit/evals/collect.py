"""Run one system on a task's items and keep every scored answer (the gate's training data).

Each (item, sample) is one real run of the engine, timed as a user would see it (TTFT, wall),
scored by the task, and kept as a row ready for the `eval_items` table and as a ScoredCall.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from mixkit.errors import MixkitError
from mixkit.evals.tasks import FileTask, Item, Task, answer_key
from mixkit.moa.agents.agent import model_calls
from mixkit.moa.config import MoAConfig
from mixkit.moa.engine.pipeline import MoA
from mixkit.moa.engine.result import Answer
from mixkit.moa.gate.model import ScoredCall

AnyTask = Task | FileTask


@dataclass
class ItemResult:
    """One run of one system on one item."""

    task: str
    item: Item
    system: str
    agent: str | None  # the agent, for single-agent systems
    sample: int
    response: str
    answer: str | None  # normalised final answer
    score: float
    failed: bool
    run_id: str | None
    ttft_s: float | None
    wall_s: float
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    early_exit: bool = False
    gate: dict | None = None
    started_at: float = 0.0

    def row(self, eval_id: str) -> dict:
        """The `eval_items` row of this result."""
        return {
            "eval_id": eval_id,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "task": self.task,
            "item": self.item.index,
            "system": self.system,
            "agent": self.agent,
            "sample": self.sample,
            "prompt": self.item.prompt,
            "expected": self.item.expected,
            "answer": self.answer,
            "score": self.score,
            "ttft_s": self.ttft_s,
            "wall_s": self.wall_s,
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }

    def scored_call(self) -> ScoredCall:
        assert self.agent is not None
        return ScoredCall(
            prompt=self.item.prompt,
            agent=self.agent,
            score=self.score,
            answer=self.answer,
            task=self.task,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_s=round(self.wall_s, 3),
        )


def single_config(config: MoAConfig, agent: str) -> MoAConfig:
    """`agent` of `config` answering alone: a MoA with no proposer layers and no gate."""
    return MoAConfig(
        name=f"single:{agent}",
        agents={agent: config.agents[agent]},
        aggregator=agent,
        deadline_s=config.deadline_s,
        retries=config.retries,
    )


async def run_item(
    moa: MoA, task: AnyTask, item: Item, system: str, agent: str | None, sample: int,
    max_tokens: int | None,
) -> ItemResult:  # fmt: skip
    """One real, timed run of `moa` on `item`, scored."""
    stream = moa.stream(item.prompt, max_tokens=max_tokens)
    started_at, start = time.time(), time.monotonic()
    failed = False
    answer: Answer | None
    try:
        answer = await stream.collect()
    except MixkitError:
        answer, failed = stream.result, True
    wall = time.monotonic() - start
    text = answer.answer if answer is not None and not failed else ""
    calls = answer.calls if answer is not None else []
    costs = [c.cost_usd for c in calls if c.cost_usd is not None]
    return ItemResult(
        task=task.name,
        item=item,
        system=system,
        agent=agent,
        sample=sample,
        response=text,
        # a one-line reply (a program agent's 'olleh') is its own answer, as in scoring
        answer=answer_key(text) if text else None,
        score=task.score(text, item) if text else 0.0,
        failed=failed,
        run_id=answer.run_id if answer is not None else None,
        ttft_s=answer.ttft_s if answer is not None else None,
        wall_s=wall,
        calls=model_calls(calls),
        prompt_tokens=sum(c.prompt_tokens or 0 for c in calls),
        completion_tokens=sum(c.completion_tokens or 0 for c in calls),
        cost_usd=sum(costs) if costs else None,
        early_exit=answer is not None and answer.early_exit is not None,
        gate=answer.gate if answer is not None else None,
        started_at=started_at,
    )


async def run_system(
    config: MoAConfig,
    task: AnyTask,
    *,
    system: str,
    agent: str | None = None,
    samples: int = 1,
    max_tokens: int | None = 128,
    log: bool | str = False,
    on_result: Callable[[ItemResult], None] | None = None,
) -> list[ItemResult]:
    """Every item of `task`, `samples` times each, answered by `config`; one run at a time."""
    moa = MoA(config, log=log)
    results = []
    for item in task.items():
        for sample in range(samples):
            result = await run_item(moa, task, item, system, agent, sample, max_tokens)
            results.append(result)
            if on_result:
                on_result(result)
    return results


def new_eval_id() -> str:
    return uuid.uuid4().hex
