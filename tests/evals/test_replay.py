"""Strategies computed from the single runs: the gate's choice replayed, its fallback, and votes."""

from __future__ import annotations

import pytest

from mixkit.evals.collect import ItemResult
from mixkit.evals.replay import replay_gated, vote_agents, vote_weighted
from mixkit.evals.strategies import summarize
from mixkit.evals.tasks import Item
from mixkit.moa.config import parse_config
from mixkit.moa.gate import model as g
from tests.moa.planted import planted
from tests.moa.test_gate import traces

AGENTS = ("adder", "speller", "weak")


def run(agent, prompt, answer, score, *, failed=False, wall=2.0) -> ItemResult:
    return ItemResult(
        task="t", item=Item(0, prompt, "x"), system=f"single:{agent}", agent=agent, sample=0,
        response=f"Answer: {answer}", answer=answer, score=score, failed=failed,
        run_id=f"run-{agent}", ttft_s=wall / 4, wall_s=wall, calls=1, prompt_tokens=10,
        completion_tokens=5, cost_usd=None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A mixture gated by a gate that learned: adder for sums, speller for reversals."""
    path = tmp_path_factory.mktemp("gate") / "gate.json"
    gate = g.train(traces(planted(60, seed=1)))
    gate.save(path)
    config = parse_config({
        "aggregator": "adder",
        "gate": {"path": str(path), "k": 2, "combine": "vote"},
        "agents": {n: {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": n}
                   for n in AGENTS},
        "layers": [{"agents": list(AGENTS)}],
    })  # fmt: skip
    return config, gate


def test_gated_alone_reuses_the_chosen_agents_single_run(gated):
    config, gate = gated
    prompt = "What is 120 + 33? Give the sum."
    singles = {a: run(a, prompt, a, float(a == "adder")) for a in AGENTS}
    got = replay_gated(config, gate, singles)
    assert got is not None and got.system == "gated" and got.agent is None
    assert (got.answer, got.score, got.run_id, got.calls) == ("adder", 1.0, "run-adder", 1)
    assert got.gate["strategy"] == "alone" and got.gate["chosen"] == ["adder"]
    assert got.gate["replayed"] is True and got.gate["fallbacks"] == []


def test_a_failed_choice_falls_back_to_the_next_ranked_agent(gated):
    config, gate = gated
    prompt = "What is 120 + 33? Give the sum."
    singles = {a: run(a, prompt, a, 0.5, wall=3.0) for a in AGENTS}
    singles["adder"] = run("adder", prompt, None, 0.0, failed=True, wall=5.0)
    got = replay_gated(config, gate, singles)
    ranking = got.gate["ranking"]
    assert ranking[0] == "adder"
    assert got.answer == ranking[1] and got.calls == 2 and got.wall_s == 8.0
    assert got.ttft_s == singles["adder"].ttft_s  # the first streamed piece was the failed one's
    assert got.gate["fallbacks"] == [f"single:{ranking[1]}"]


def test_replay_needs_every_run_it_would_use(gated):
    config, gate = gated
    prompt = "What is 120 + 33? Give the sum."
    assert replay_gated(config, gate, {"speller": run("speller", prompt, "1", 0.0)}) is None
    assert replay_gated(config, gate, {}) is None


def test_a_vote_over_agents_takes_the_majority_and_its_score():
    singles = {
        "a": run("a", "q", "7", 1.0, wall=1.0),
        "b": run("b", "q", "9", 0.0, wall=4.0),
        "c": run("c", "q", "7", 1.0, wall=2.0),
    }
    got = vote_agents(singles, ["a", "b", "c"])
    assert (got.system, got.answer, got.score, got.calls) == ("vote-agents", "7", 1.0, 3)
    assert got.ttft_s is None and got.wall_s == 4.0 and got.prompt_tokens == 30
    tie = vote_agents({"b": singles["b"], "a": singles["a"]}, ["b", "a"])
    assert (tie.answer, tie.score) == ("9", 0.0)  # a tie goes to the earliest agent in order
    rows = {r.strategy: r for r in summarize([*singles.values(), got]) if r.task == "t"}
    assert rows["vote-agents"].accuracy == 1.0 and rows["vote-agents"].calls == 3


def test_rows_carry_the_standard_error_of_their_accuracy():
    rs = [run("a", f"q{i}", "7", float(i < 2)) for i in range(4)]  # scores 1, 1, 0, 0
    for i, r in enumerate(rs):
        r.item = Item(i, f"q{i}", "7")
    row = next(r for r in summarize(rs) if r.task == "t")
    assert row.accuracy == 0.5
    assert row.se == pytest.approx((1 / 3) ** 0.5 / 2)  # stdev 0.577 / sqrt(4)


def test_the_gate_weighted_vote_follows_the_gates_weights(gated):
    config, gate = gated
    prompt = "What is 120 + 33? Give the sum."
    singles = {a: run(a, prompt, a, float(a == "adder")) for a in AGENTS}
    got = vote_weighted(config, gate, singles)
    assert (got.system, got.answer, got.score, got.calls) == ("vote-weighted", "adder", 1.0, 3)
    # the gate is sure about the adder here: two others agreeing do not outvote it
    singles["weak"] = run("weak", prompt, "speller", 0.0)
    assert vote_weighted(config, gate, singles).answer == "adder"
    # a pair of agents only, and nothing without their runs
    assert vote_weighted(config, gate, singles, ["speller", "weak"]).answer == "speller"
    assert vote_weighted(config, gate, {"adder": singles["adder"]}) is None
