"""Score a MoA and each of its single agents on the same seeded items, at the same max_tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from mixkit.errors import MixkitError
from mixkit.evals.collect import AnyTask
from mixkit.evals.tasks import FileTask, Task
from mixkit.moa import Answer, MoA, MoAConfig


@dataclass
class SystemScore:
    """One system's totals over the task's items."""

    system: str
    correct: float = 0.0
    n: int = 0
    failed: int = 0  # runs that raised (counted as wrong)
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy}


@dataclass
class EvalResult:
    task: str
    n: int
    seed: int
    max_tokens: int
    preset: str
    scores: list[SystemScore] = field(default_factory=list)
    source: str = "reasoning-gym"  # or the tasks file's path

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "scores"} | {
            "scores": [s.to_dict() for s in self.scores]
        }


def systems_of(config: MoAConfig, singles: bool = True) -> list[tuple[str, MoAConfig]]:
    """The MoA itself, then each of its agents alone (a MoA with no proposer layers)."""
    systems = [(f"moa:{config.name}", config)]
    if singles:
        for name, agent in config.agents.items():
            single = MoAConfig(
                name=f"single:{name}",
                agents={name: agent},
                aggregator=name,
                deadline_s=config.deadline_s,
                retries=config.retries,
            )
            systems.append((f"single:{name} ({agent.model}, T={agent.temperature})", single))
    return systems


async def _score_system(
    label: str, config: MoAConfig, task: AnyTask, max_tokens: int, on_item: Callable | None
) -> SystemScore:
    moa = MoA(config, log=False)
    score = SystemScore(system=label)
    for item in task.items():
        stream = moa.stream(item.prompt, max_tokens=max_tokens)
        start = time.monotonic()
        answer: Answer | None
        try:
            answer = await stream.collect()
            item_score = task.score(answer.answer, item)
        except MixkitError:
            answer, item_score = stream.result, 0.0
            score.failed += 1
        score.wall_s += time.monotonic() - start
        score.n += 1
        score.correct += item_score
        if answer is not None:
            score.calls += len(answer.calls)
            score.prompt_tokens += answer.prompt_tokens
            score.completion_tokens += answer.completion_tokens
        if on_item:
            on_item(label, item, item_score, answer)
    return score


def run_eval(
    config: MoAConfig,
    task: str | AnyTask,
    n: int = 20,
    seed: int = 0,
    max_tokens: int = 128,
    singles: bool = True,
    on_item: Callable | None = None,
) -> EvalResult:
    """Score the MoA and (with `singles`) each agent alone on the items of `task`: a
    reasoning-gym name (`n` items seeded by `seed`), or a task object such as FileTask(path).

    Every call of every system uses the same `max_tokens`. Systems run one after another, so
    each gets the whole machine.
    """
    items = Task(task, n=n, seed=seed) if isinstance(task, str) else task
    result = EvalResult(
        task=items.name,
        n=items.n,
        seed=items.seed,
        max_tokens=max_tokens,
        preset=config.name,
        source=str(items.path) if isinstance(items, FileTask) else "reasoning-gym",
    )
    for label, system in systems_of(config, singles):
        result.scores.append(asyncio.run(_score_system(label, system, items, max_tokens, on_item)))
    return result
