"""What the engine does with a gate: plan a run, and pick the answer of a vote.

    plan_run(config, gate, prompt)  -> Plan: answer alone with one agent (asked once, or until
                                       its answers agree: the gate's "votes"), or run the first
                                       layer with only the top-k slots (and combine by
                                       vote/synthesis)
    pick_by_vote(answers, weights)  -> the proposal carrying the weighted-majority final answer

Pure functions over configs and strings; the pipeline calls them (pipeline.py). Agreement
between proposals (early exit) is `answers.agreement`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixkit.moa.answers import final_answer, similarity
from mixkit.moa.config import LayerConfig, MoAConfig
from mixkit.moa.engine.layers import labels
from mixkit.moa.gate.costs import relative_costs, relative_latencies
from mixkit.moa.gate.model import Gate, GateDecision, vote


@dataclass
class Plan:
    """How one run goes: which layers run, who answers, how proposals are combined."""

    layers: list[LayerConfig]
    alone: str | None = None  # an agent answering the conversation by itself (no layers)
    votes: int = 1  # alone: the most answers it gives (the gate's "votes" strategy)
    agree: int = 1  # alone: it stops when this many of them agree
    combine: str = "synthesize"  # "synthesize" (aggregator) | "vote" (no aggregator call)
    weights: list[float] = field(default_factory=list)  # gate weights of layer 1's slots
    decision: GateDecision | None = None


def agent_costs(config: MoAConfig, gate: Gate) -> tuple[dict[str, float], float]:
    """Relative cost per agent of the first layer (and of the aggregator) for the cost term:
    money (declared prices, else tokens) plus `latency_weight` x time to the answer, each
    relative to the dearest agent (gate/costs.py)."""
    names = sorted({*config.layers[0].agents, config.aggregator})
    tokens, seconds = {}, {}
    for n in names:
        if n in gate.agents:
            tokens[n], seconds[n] = gate.expected_tokens(n), gate.expected_latency(n)
        else:  # the aggregator may have no predictor: cost it like the mean proposer
            known = [gate.expected_tokens(a) for a in config.layers[0].agents]
            tokens[n] = (
                sum(t[0] for t in known) / len(known) * 2,  # it reads the references
                sum(t[1] for t in known) / len(known),
            )
            lat = [gate.expected_latency(a) for a in config.layers[0].agents]
            seconds[n] = sum(lat) / len(lat)
    prices = {
        n: (
            (config.agents[n].price_in or 0.0, config.agents[n].price_out or 0.0)
            if config.agents[n].price_in is not None or config.agents[n].price_out is not None
            else None
        )
        for n in names
    }
    money, time = relative_costs(tokens, prices), relative_latencies(seconds)
    weight = config.gate.latency_weight if config.gate else 1.0
    costs = {n: money[n] + weight * time[n] for n in names}
    combiner = (
        costs[config.aggregator] if config.gate and config.gate.combine == "synthesize" else 0.0
    )
    return costs, combiner


def plan_run(
    config: MoAConfig, gate: Gate | None, prompt: str, *, noise: float | None = None
) -> Plan:
    """The plan of a run: ungated, all layers and the aggregator; gated, what the gate chose."""
    if config.gate is None or gate is None:
        return Plan(layers=list(config.layers))
    first = config.layers[0]
    names = labels(first.agents)
    costs, combiner = agent_costs(config, gate)
    decision = gate.decide(
        prompt,
        list(zip(names, first.agents, strict=True)),
        k=config.gate.k,
        cost_weight=config.gate.cost_weight,
        costs=costs,
        combiner_cost=combiner,
        temperature=config.gate.temperature,
        noise=config.gate.noise if noise is None else noise,
        votes=config.gate.votes,
    )
    if decision.strategy in ("alone", "votes"):
        agent = first.agents[names.index(decision.chosen[0])]
        return Plan(
            layers=[], alone=agent, decision=decision, votes=decision.votes, agree=decision.agree
        )
    chosen = [first.agents[names.index(label)] for label in decision.chosen]
    quorum = min(first.quorum, len(chosen)) if first.quorum else None
    layer = LayerConfig(
        agents=chosen, quorum=quorum, min_answers=min(first.min_answers, len(chosen))
    )
    return Plan(
        layers=[layer, *config.layers[1:]],
        combine=config.gate.combine,
        weights=decision.weights,
        decision=decision,
    )


def pick_by_vote(answers: list[str], weights: list[float]) -> int:
    """Index of the best-weighted proposal whose final answer wins the weighted vote.

    Without extractable answers, the proposal most similar to the others (weighted) wins.
    """
    keys = [final_answer(a) for a in answers]
    winner = vote(keys, weights)
    if winner is not None:
        ranked = sorted(range(len(answers)), key=lambda i: -weights[i])
        return next(i for i in ranked if keys[i] == winner)
    centrality = [
        sum(
            w * similarity(a, b)
            for j, (b, w) in enumerate(zip(answers, weights, strict=True))
            if j != i
        )
        + weights[i]
        for i, a in enumerate(answers)
    ]
    return max(range(len(answers)), key=lambda i: centrality[i])
