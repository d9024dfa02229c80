"""Answers checked across agents: a program agent's answer agrees with a text answer (early exit),
or disagrees and is settled by the gate's weighted vote or by an aggregator that sees the program.

Agents are the fake OpenAI backend (fixed replies); the program really runs in the sandbox.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mixkit.moa import MoA, ProgramAnswer, parse_config, synthesis_messages
from mixkit.moa.gate import model as g


def fixed_gate(path: Path, scores: dict[str, float], mix: float) -> Path:
    """A gate whose predicted accuracies are the same for every prompt: `scores` per agent and
    `mix` for consulting the top k."""
    calls = [
        g.ScoredCall(f"question {i}", agent, float(i % 2), "x", "t", 10, 5)
        for i in range(8)
        for agent in scores
    ]
    gate = g.train(calls)
    for predictor, p in [*((gate.agents[a], p) for a, p in scores.items()), (gate.mix, mix)]:
        predictor.weights = [0.0] * len(predictor.weights)
        predictor.bias = math.log(p / (1 - p))
    gate.save(path)
    return path


def mixture(url: str, models: dict[str, str], layer: list[str], **top) -> dict:
    agents = {n: {"provider": "openai", "base_url": url, "model": m} for n, m in models.items()}
    agents["prog"]["kind"] = "program"
    return {"name": "checked", "deadline_s": 20, "retries": 0, "agents": agents,
            "layers": [{"agents": layer}], **top}  # fmt: skip


MODELS = {"prog": "ok:print(40 + 2)", "t1": "ok:Answer: 41", "t2": "ok:I think Answer: 41"}


@pytest.mark.parametrize(
    "scores, expected",
    [
        ({"prog": 0.9, "t1": 0.6, "t2": 0.6}, "42"),  # the gate trusts the program here
        ({"prog": 0.3, "t1": 0.6, "t2": 0.6}, "Answer: 41"),  # ... and the texts here
    ],
)
def test_a_disagreement_is_settled_by_the_gates_weighted_vote(scripted, tmp_path, scores, expected):
    gate = fixed_gate(tmp_path / "gate.json", scores, mix=0.99)
    cfg = mixture(scripted.url, {**MODELS, "agg": "ok:AGG"}, ["prog", "t1", "t2"],
                  aggregator="agg", gate={"path": str(gate), "k": 3, "combine": "vote"})  # fmt: skip
    answer = MoA(parse_config(cfg), log=False).run("What is 40 + 2?")
    assert answer.gate["strategy"] == "mix"
    assert answer.answer == expected
    assert "agg" not in {c.agent for c in answer.calls}  # a vote: no aggregator call
    # a program's winning answer comes with the program that printed it, as reasoning
    assert (answer.reasoning is not None) == (expected == "42")


def test_an_aggregator_sees_the_program_its_status_and_its_output(scripted, tmp_path):
    gate = fixed_gate(tmp_path / "gate.json", {"prog": 0.6, "t1": 0.6, "t2": 0.5}, mix=0.99)
    agg = "ok:Answer: 42 # aggregated"
    cfg = mixture(scripted.url, {**MODELS, "agg": agg}, ["prog", "t1", "t2"],
                  aggregator="agg", gate={"path": str(gate), "k": 3, "combine": "synthesize"})  # fmt: skip
    answer = MoA(parse_config(cfg), log=False).run("What is 40 + 2?")
    assert answer.answer == "Answer: 42 # aggregated"
    (body,) = scripted.bodies(agg)
    system = body["messages"][0]["content"]
    assert "```python\nprint(40 + 2)\n```" in system
    assert "It ran (ok) and printed:\n42" in system
    assert "Answer: 41" in system  # the text proposals are there too


def test_a_program_and_a_text_answer_that_agree_end_the_run(scripted):
    models = {"prog": "ok:print(84 / 2)", "t1": "ok:so Answer: 42.0", "agg": "ok:AGG-agree"}
    cfg = mixture(scripted.url, models, ["prog", "t1"], aggregator="agg",
                  early_exit={"min_agree": 2})  # fmt: skip
    answer = MoA(parse_config(cfg), log=False).run("What is 84 / 2?")
    assert answer.early_exit["agreed"] == "42"
    assert scripted.bodies("ok:AGG-agree") == []


def test_synthesis_prompt_shows_a_program_proposal_and_keeps_text_as_it_is():
    program = ProgramAnswer("-7", "print(-14 / 2)", "-7.0\n", "ok")
    (system, user) = synthesis_messages(
        [{"role": "user", "content": "-14 / 2?"}], [program, "It is -7."]
    )
    assert "print(-14 / 2)" in system["content"] and "printed:\n-7.0" in system["content"]
    assert "It is -7." in system["content"] and user["content"] == "-14 / 2?"


def test_a_gate_falls_back_to_the_next_agent_when_the_program_agent_fails(scripted, tmp_path):
    gate = fixed_gate(tmp_path / "gate.json", {"prog": 0.9, "t1": 0.6}, mix=0.01)
    models = {"prog": "ok:print(1 / 0)  # falls back", "t1": "ok:Answer: 7"}
    cfg = mixture(scripted.url, models, ["prog", "t1"], aggregator="t1",
                  gate={"path": str(gate), "k": 2})  # fmt: skip
    cfg["agents"]["prog"]["retries"] = 0
    answer = MoA(parse_config(cfg), log=False).run("What is 3 + 4?")
    assert answer.gate["strategy"] == "alone" and answer.gate["chosen"] == ["prog"]
    assert answer.answer == "Answer: 7"
    assert [(c.agent, c.outcome) for c in answer.calls] == [("prog", "error"), ("t1", "ok")]
    assert "ZeroDivisionError" in answer.calls[0].error


def test_a_staircase_aggregator_reads_what_a_program_proposal_printed(scripted):
    models = {"prog": "ok:print(40 + 2)  # staircase", "t1": "ok:Answer: 41",
              "agg": "ok:Answer: 42 # stairs"}  # fmt: skip
    cfg = mixture(scripted.url, models, ["prog", "t1"], aggregator="agg",
                  staircase={"chunk_chars": 8, "step_tokens": 2})  # fmt: skip
    answer = MoA(parse_config(cfg), log=False).run("What is 40 + 2?")
    assert answer.answer.startswith("Answer: 42")
    last = scripted.bodies("ok:Answer: 42 # stairs")[-1]
    assert "The program ran (ok) and printed: 42" in json.dumps(last["messages"])
