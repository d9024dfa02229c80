"""The gate over agents: features, learning a planted routing, decisions, files and their errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mixkit.errors import ConfigError
from mixkit.moa.answers import agreement
from mixkit.moa.config import EarlyExitConfig, parse_config
from mixkit.moa.gate import model as g
from mixkit.moa.gate.features import text_features
from mixkit.moa.gate.plan import pick_by_vote, plan_run
from tests.moa.planted import add_prompt, planted, reverse_prompt


def traces(items) -> list[g.ScoredCall]:
    """Agent `adder` is right on sums only, `speller` on reversals only, `weak` never."""
    calls = []
    for kind, prompt, expected in items:
        for agent, good in (("adder", "add"), ("speller", "reverse"), ("weak", None)):
            right = kind == good
            calls.append(
                g.ScoredCall(
                    prompt, agent, float(right), expected if right else "wrong", kind, 50, 10
                )
            )
    return calls


def test_text_features_are_deterministic_and_normalised():
    prompts = [p for _, p, _ in planted(50, 0)]
    x = text_features(prompts)
    assert x.shape == (50, 1024 + 8) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x[:, :1024], axis=1), 1.0, atol=1e-5)
    assert np.array_equal(x, text_features(prompts))  # cost per prompt: bench/gate_features.py


def test_fit_logistic_matches_a_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] - 0.5 * x[:, 2] > 0).astype(float)
    w, b = g.fit_logistic(x, y, l2=1e-4, steps=600)
    accuracy = ((g._sigmoid(x @ w + b) > 0.5) == (y > 0.5)).mean()
    assert accuracy > 0.95
    assert w[0] > 0 and w[2] < 0 and abs(w[1]) < abs(w[0])


def test_the_gate_learns_a_planted_routing_and_beats_every_agent_alone():
    gate = g.train(traces(planted(60, seed=1)), mix_k=3)
    held_out = planted(40, seed=2)
    slots = [("adder", "adder"), ("speller", "speller"), ("weak", "weak")]
    gated_right = 0
    for kind, prompt, _ in held_out:
        d = gate.decide(prompt, slots, k=2)
        assert d.strategy == "alone", d
        assert d.chosen == ["adder" if kind == "add" else "speller"], (prompt, d.scores)
        gated_right += 1
    alone = {a: sum(k == good for k, _, _ in held_out) / len(held_out)
             for a, good in (("adder", "add"), ("speller", "reverse"))}  # fmt: skip
    assert gated_right / len(held_out) == 1.0 > max(alone.values())
    # what it learned, per task: each agent's real accuracy and its picks
    assert gate.tasks["add"]["accuracy"]["adder"] == 1.0
    assert gate.tasks["add"]["picks"] == {"alone:adder": 30}


def test_mixing_is_chosen_only_where_a_vote_beats_every_single_agent():
    """On 'vote' prompts each agent is wrong on a different third, so two of three always agree
    on the right answer: the vote is always right, every agent alone only 2/3 of the time. On
    'solo' prompts only `a` is right and the other two agree on a wrong answer: the vote loses."""
    rng = random.Random(3)
    calls = []
    for i in range(90):
        prompt, expected = add_prompt(rng) if i % 2 else reverse_prompt(rng)
        kind = "vote" if i % 2 else "solo"
        for j, agent in enumerate(("a", "b", "c")):
            if kind == "solo":  # only `a` is ever right; the others agree on one wrong answer
                right = agent == "a"
                answer = expected if right else "wrong"
            else:  # each agent is wrong on a third of the items, never two at once
                right = i % 3 != j
                answer = expected if right else f"wrong-{agent}"
            calls.append(g.ScoredCall(prompt, agent, float(right), answer, kind, 40, 8))
    gate = g.train(calls, mix_k=3)
    assert gate.tasks["vote"]["accuracy"]["mix"] == 1.0
    slots = [("a", "a"), ("b", "b"), ("c", "c")]
    sums = [add_prompt(random.Random(100 + i))[0] for i in range(10)]
    spells = [reverse_prompt(random.Random(200 + i))[0] for i in range(10)]
    assert all(gate.decide(p, slots, k=3).strategy == "mix" for p in sums)
    decisions = [gate.decide(p, slots, k=3) for p in spells]
    assert all(d.strategy == "alone" and d.chosen == ["a"] for d in decisions)


def test_cost_term_moves_the_choice_to_the_cheaper_agent():
    calls = []
    for kind, prompt, expected in planted(40, seed=5):
        calls.append(g.ScoredCall(prompt, "big", 0.9, expected, kind, 100, 100))
        calls.append(g.ScoredCall(prompt, "small", 0.8, expected, kind, 100, 10))
    gate = g.train(calls)
    slots = [("big", "big"), ("small", "small")]
    prompt = planted(1, seed=6)[0][1]
    assert gate.decide(prompt, slots, k=1).chosen == ["big"]
    costs = g.relative_costs(
        {"big": (100, 100), "small": (100, 10)}, {"big": (1.0, 10.0), "small": (1.0, 10.0)}
    )
    assert costs["big"] == 1.0 and costs["small"] == pytest.approx(200 / 1100)
    assert gate.decide(prompt, slots, k=1, cost_weight=0.5, costs=costs).chosen == ["small"]


def test_top_k_weights_are_renormalised_over_the_chosen_slots_only():
    gate = g.train(traces(planted(40, seed=7)))
    prompt = planted(1, seed=8)[0][1]
    d = gate.decide(prompt, [("adder", "adder"), ("speller", "speller"), ("weak", "weak")], k=3,
                    temperature=0.2)  # fmt: skip
    assert len(d.weights) == len(d.chosen) and sum(d.weights) == pytest.approx(1.0, abs=1e-3)
    assert d.weights == sorted(d.weights, reverse=True)
    assert set(d.chosen) | set(d.skipped) == {"adder", "speller", "weak"}


def test_exploration_noise_sometimes_takes_another_candidate():
    gate = g.train(traces(planted(40, seed=9)))
    prompt = planted(1, seed=10)[0][1]
    slots = [("adder", "adder"), ("speller", "speller")]
    rng = np.random.default_rng(0)
    picks = {gate.decide(prompt, slots, k=1, noise=1.0, rng=rng).chosen[0] for _ in range(40)}
    assert picks == {"adder", "speller"}
    assert {gate.decide(prompt, slots, k=1).chosen[0] for _ in range(5)} == {"adder"}


def test_a_gate_file_round_trips(tmp_path):
    gate = g.train(traces(planted(30, seed=11)), source="unit test")
    path = tmp_path / "gate.json"
    gate.save(path)
    again = g.load(path)
    prompt = planted(1, seed=12)[0][1]
    assert again.scores(prompt)[0] == pytest.approx(gate.scores(prompt)[0], abs=1e-4)
    assert again.tasks == json.loads(json.dumps(gate.tasks)) and again.source == "unit test"


@pytest.mark.parametrize(
    "content, words",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a mixkit gate file"),
        ('{"version": 1}', "not a mixkit gate file"),
        ('{"version": 99, "features": "text"}', "version 99"),
    ],
)
def test_a_bad_gate_file_is_a_config_error(tmp_path, content, words):
    path = tmp_path / "gate.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=words):
        g.load(path)


def test_a_missing_gate_file_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="gate file not found.*mixkit gate train"):
        g.load(tmp_path / "nope.json")


def test_scored_calls_from_jsonl_name_the_bad_line(tmp_path):
    path = tmp_path / "calls.jsonl"
    path.write_text('{"prompt": "p", "agent": "a", "score": 1}\n\n{"prompt": "p", "agent": "a"}\n')
    with pytest.raises(ConfigError, match=r"calls.jsonl:3: .*score"):
        g.read_jsonl(path)
    path.write_text('{"prompt": "p", "agent": "a", "score": 1}\n{oops\n')
    with pytest.raises(ConfigError, match=r"calls.jsonl:2: not valid JSON"):
        g.read_jsonl(path)


def test_a_gate_for_other_agents_is_refused(tmp_path):
    gate = g.train(traces(planted(20, seed=13)))
    with pytest.raises(ConfigError, match="no model for agent.*mixkit gate train"):
        gate.decide("hi", [("x", "someone-else")], k=1)


def test_plan_run_alone_skips_every_layer_and_mix_keeps_only_the_top_k(tmp_path):
    gate = g.train(traces(planted(40, seed=14)))
    path = tmp_path / "gate.json"
    gate.save(path)
    cfg = parse_config({
        "aggregator": "adder",
        "gate": {"path": str(path), "k": 2},
        "agents": {n: {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": n}
                   for n in ("adder", "speller", "weak")},
        "layers": [{"agents": ["adder", "speller", "weak"]}],
    })  # fmt: skip
    plan = plan_run(cfg, gate, "What is 12 + 30? Give the sum.")
    assert plan.alone == "adder" and plan.layers == [] and plan.decision is not None
    assert plan.decision.skipped == ["speller", "weak"]


@pytest.mark.parametrize(
    "answers, index",
    [
        (["Answer: 12", "so... Answer: 13", "Answer: 12.0"], 0),  # 12 == 12.0
        (["Answer: 12", "Answer: 13", "Answer: 14"], None),
        (["The sky is blue because of Rayleigh scattering.",
          "Rayleigh scattering is why the sky is blue."], 0),  # same words, free text
        (["The sky is blue because of Rayleigh scattering.", "I like turtles."], None),
    ],
)  # fmt: skip
def test_agreement(answers, index):
    assert agreement(answers, EarlyExitConfig(min_agree=2, similarity=0.6)) == index


def test_pick_by_vote_takes_the_weighted_majority_and_its_best_weighted_text():
    answers = ["a... Answer: 5", "b... Answer: 7", "c... Answer: 7"]
    assert pick_by_vote(answers, [0.4, 0.35, 0.25]) == 1
    assert pick_by_vote(answers, [0.6, 0.2, 0.2]) == 0


def _timed_traces(seconds: dict[str, float], accuracy: dict[str, float]) -> list[g.ScoredCall]:
    """Two agents with equal tokens: `slow` right more often, `fast` quicker to its answer."""
    calls = []
    for kind, prompt, expected in planted(40, seed=15):
        for agent in ("slow", "fast"):
            calls.append(g.ScoredCall(prompt, agent, accuracy[agent], expected, kind, 50, 20,
                                      latency_s=seconds[agent]))  # fmt: skip
    return calls


def _config(path, **gate) -> object:
    return parse_config({
        "aggregator": "fast",
        "gate": {"path": str(path), "k": 1, **gate},
        "agents": {n: {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": n}
                   for n in ("slow", "fast")},
        "layers": [{"agents": ["slow", "fast"]}],
    })  # fmt: skip


def test_latency_learned_from_the_traces_moves_the_choice_to_the_faster_agent(tmp_path):
    gate = g.train(_timed_traces({"slow": 12.0, "fast": 3.0}, {"slow": 0.9, "fast": 0.8}))
    assert gate.expected_latency("slow") == pytest.approx(12.0)
    assert gate.expected_latency("fast") == pytest.approx(3.0)
    path = tmp_path / "gate.json"
    gate.save(path)
    prompt = planted(1, seed=16)[0][1]
    # equal tokens, so without latency the cost term cannot tell them apart: the better one wins
    assert (
        plan_run(_config(path, cost_weight=0.5, latency_weight=0.0), gate, prompt).alone == "slow"
    )
    assert plan_run(_config(path, cost_weight=0.0), gate, prompt).alone == "slow"
    # with latency: slow costs 1 + 1, fast 1 + 0.25 (relative): 0.9 - 1.0 < 0.8 - 0.625
    assert plan_run(_config(path, cost_weight=0.5), gate, prompt).alone == "fast"
    assert g.relative_latencies({"slow": 12.0, "fast": 3.0, "unknown": 0.0}) == {
        "slow": 1.0, "fast": 0.25, "unknown": 0.0,
    }  # fmt: skip


def test_a_version_1_gate_file_still_loads_and_costs_no_latency(tmp_path):
    gate = g.train(_timed_traces({"slow": 12.0, "fast": 3.0}, {"slow": 0.9, "fast": 0.8}))
    data = gate.to_dict()
    assert data["version"] == g.GATE_VERSION == 3
    data["version"] = 1
    del data["votes"]  # what version 1 wrote: no vote candidates, no latency
    for p in [*data["agents"].values(), data["mix"]]:
        del p["latency_s"]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(data))
    old = g.load(path)
    assert old.expected_latency("slow") == 0.0 and old.expected_latency("fast") == 0.0
    prompt = planted(1, seed=16)[0][1]
    assert plan_run(_config(path, cost_weight=0.5), old, prompt).alone == "slow"


def test_scored_calls_keep_their_latency_and_labelled_prompts_do_not_pull_means_to_zero():
    calls = [
        g.ScoredCall.from_dict({"prompt": "p", "agent": "a", "score": 1, "latency_s": 4,
                                "prompt_tokens": 10, "completion_tokens": 6}, "x"),
        g.ScoredCall.from_dict({"prompt": "q", "agent": "a", "score": 0}, "x"),  # a label only
    ]  # fmt: skip
    assert calls[0].latency_s == 4.0 and calls[1].latency_s is None
    p = g.train(calls).agents["a"]
    assert (p.latency_s, p.prompt_tokens, p.completion_tokens) == (4.0, 10.0, 6.0)
