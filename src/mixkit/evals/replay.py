"""Strategies that only choose among the agents' answers, computed from the single-agent runs.

A gated run that answers alone sends the item's prompt to one agent, with that agent's settings:
the very call `single:AGENT` makes on the same item. Sampling is random per call, so the single
run is a draw from the same distribution the gated run's call would be drawn from; reusing it is
statistically identical, costs no call, and pairs the comparison (the gated row and the chosen
agent's row share that answer). A vote needs only the agents' answers, so it is computed the same
way. `mixkit eval --strategies` does this whenever the single runs are there (docs/benchmarks.md):

    replay_gated(config, gate, singles)  the gate's decision on the prompt (recorded, with the
                                         calls it would make); alone: the chosen agent's single
                                         run; a vote of the top k: the gate-weighted vote of
                                         their single runs; None when it needs more than that
                                         (an aggregator call, a vote of one agent's samples, or
                                         a slot with no single run)
    vote_agents(singles, order)          a majority vote over every agent's first answer
    vote_weighted(config, gate, singles) every agent's first answer, weighted as the gate weighs
                                         a mix (softmax of its utilities): a checked answer

A replayed answer's time is its chosen run's; a vote's TTFT is unknown (None) and its wall time is
the slowest consulted run's, as if they ran side by side.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mixkit.evals.collect import ItemResult
from mixkit.moa.config import MoAConfig
from mixkit.moa.engine.layers import labels
from mixkit.moa.gate.model import Gate, vote
from mixkit.moa.gate.plan import plan_run


def replay_gated(
    config: MoAConfig, gate: Gate, singles: dict[str, ItemResult], label: str = "gated"
) -> ItemResult | None:
    """The gated strategy on one item from `singles` (agent -> its sample-0 run of the item)."""
    if not singles:
        return None
    first = next(iter(singles.values()))
    plan = plan_run(config, gate, first.item.prompt, noise=0.0)
    d = plan.decision
    if d is None:
        return None
    decision = d.to_dict() | {"replayed": True}
    if plan.votes > 1:
        return None  # several calls of one agent: only a real run draws them
    if plan.alone is not None:
        return _alone(singles, plan.alone, d.ranking, config.layers[0].agents, label, decision)
    if plan.combine != "vote":
        return None  # an aggregator call: only a real run says what it would answer
    runs = [singles.get(a) for a in plan.layers[0].agents]
    if any(r is None for r in runs):
        return None
    return _voted([r for r in runs if r is not None], plan.weights, label, decision)


def _alone(
    singles: dict[str, ItemResult],
    agent: str,
    ranking: list[str],
    slots: list[str],
    label: str,
    decision: dict,
) -> ItemResult | None:
    """The chosen agent's run; if it failed (no answer: e.g. every program failed), the next
    distinct agent of the gate's ranking answers after it, as the engine's fallback does
    (engine/final.py): calls, tokens and time add up."""
    by_label = dict(zip(labels(slots), slots, strict=True))
    names = [agent] + [a for a in dict.fromkeys(by_label[s] for s in ranking) if a != agent]
    used: list[ItemResult] = []
    for name in names:
        run = singles.get(name)
        if run is None:
            return None
        used.append(run)
        if not run.failed:
            break
    last = used[-1]
    return replace(
        last,
        system=label,
        agent=None,
        sample=0,
        ttft_s=used[0].ttft_s,
        wall_s=sum(r.wall_s for r in used),
        calls=sum(r.calls for r in used),
        prompt_tokens=sum(r.prompt_tokens for r in used),
        completion_tokens=sum(r.completion_tokens for r in used),
        gate=decision | {"fallbacks": [r.system for r in used[1:]]},
    )


def vote_agents(
    singles: dict[str, ItemResult], order: list[str], label: str = "vote-agents"
) -> ItemResult | None:
    """A plain majority vote over the first answers of the agents in `order` (ties: the
    earliest agent in `order`)."""
    runs = [singles[a] for a in order if a in singles]
    if not runs:
        return None
    return _voted(runs, [1.0] * len(runs), label, None)


def vote_weighted(
    config: MoAConfig,
    gate: Gate,
    singles: dict[str, ItemResult],
    agents: list[str] | None = None,
    label: str = "vote-weighted",
) -> ItemResult | None:
    """The gate-weighted vote of `agents` (default: every first-layer agent), always mixing: the
    weights are the softmax of the gate's utilities at the config's temperature, so the gate's
    favourite wins unless the others agree against it."""
    names = list(dict.fromkeys(agents or config.layers[0].agents))
    if not singles or any(a not in singles for a in names) or config.gate is None:
        return None
    prompt = next(iter(singles.values())).item.prompt
    d = plan_run(config, gate, prompt, noise=0.0).decision
    if d is None:
        return None
    util = np.array([d.utilities[a] for a in names]) / config.gate.temperature
    w = np.exp(util - util.max())
    weights = [float(v) for v in w / w.sum()]
    return _voted([singles[a] for a in names], weights, label, d.to_dict() | {"replayed": True})


def _voted(
    runs: list[ItemResult], weights: list[float], label: str, decision: dict | None
) -> ItemResult:
    """One result for the weighted vote of `runs`: the winning answer's best score."""
    winner = vote([r.answer for r in runs], weights)
    best = max(
        (r for r in runs if r.answer == winner and winner is not None),
        key=lambda r: r.score,
        default=runs[0],
    )
    costs = [r.cost_usd for r in runs if r.cost_usd is not None]
    return replace(
        best,
        system=label,
        agent=None,
        sample=0,
        answer=winner,
        score=best.score if winner is not None else 0.0,
        ttft_s=None,
        wall_s=max(r.wall_s for r in runs),
        calls=sum(r.calls for r in runs),
        prompt_tokens=sum(r.prompt_tokens for r in runs),
        completion_tokens=sum(r.completion_tokens for r in runs),
        cost_usd=sum(costs) if costs else None,
        failed=all(r.failed for r in runs),
        early_exit=False,
        gate=decision,
    )
