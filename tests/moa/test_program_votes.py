"""Votes where they pay: the gate learns, from several samples of one agent per prompt, where a
vote of that agent's answers beats its single answer by more than the extra calls cost, and the
engine then asks that agent until its answers agree.

Gates are trained on planted prompts (tests/moa/planted.py); the engine runs against the fake
OpenAI backend (fixed programs, `seq:` for a different program per call) and the real sandbox.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from mixkit.evals.collect import ItemResult
from mixkit.evals.replay import replay_gated
from mixkit.evals.tasks import Item
from mixkit.moa import MoA, Reasoning, parse_config
from mixkit.moa.gate import model as g
from mixkit.moa.gate.plan import plan_run
from tests.moa.planted import add_prompt, reverse_prompt


def reference_vote(samples: list[tuple[str | None, float]], votes: int, agree: int):
    """Brute force: the shortest prefix (at most `votes` long) in which `agree` answers agree,
    else the first `votes`; its most common answer (ties: the one given first) and its score."""
    n = min(votes, len(samples))
    for length in range(1, n + 1):
        counts = Counter(a for a, _ in samples[:length] if a is not None)
        if counts and max(counts.values()) >= agree:
            n = length
            break
    drawn = samples[:n]
    counts = Counter(a for a, _ in drawn if a is not None)
    if not counts:
        return 0.0, n
    top = max(counts.values())
    winner = next(a for a, _ in drawn if a is not None and counts[a] == top)
    return max(s for a, s in drawn if a == winner), n


def test_vote_label_matches_a_brute_force_reference():
    answers = [None, "1", "2", "3"]
    for seq in itertools.product(answers, repeat=4):
        samples = [(a, float(a == "2")) for a in seq]
        calls = [g.ScoredCall("p", "x", s, a) for a, s in samples]
        for votes, agree in [(3, 2), (4, 2), (4, 3), (2, 2)]:
            assert g.vote_label(calls, votes, agree) == reference_vote(samples, votes, agree), (
                seq,
                votes,
                agree,
            )


def test_a_vote_candidate_learns_its_expected_score_over_the_samples_orders():
    """The label is the brute-force vote averaged over every order of the samples; with agree=1
    ("until it answers") that is the mean score of the samples that answered."""
    answers = [None, "1", "2"]
    for seq in itertools.product(answers, repeat=3):
        samples = [(a, float(a == "2")) for a in seq]
        calls = [g.ScoredCall("p", "x", s, a) for a, s in samples]
        for votes, agree in [(3, 2), (3, 1), (2, 1)]:
            refs = [reference_vote(list(o), votes, agree) for o in itertools.permutations(samples)]
            score, drawn = g.expected_vote_label(calls, votes, agree)
            assert score == pytest.approx(sum(r[0] for r in refs) / len(refs)), (seq, agree)
            assert drawn == pytest.approx(sum(r[1] for r in refs) / len(refs)), (seq, agree)
        answered = [s for a, s in samples if a is not None]
        mean = sum(answered) / len(answered) if answered else 0.0
        assert g.expected_vote_label(calls, 3, 1)[0] == pytest.approx(mean), seq
    # more samples than permutations to try: a sample of orders, not the first 120 (which all
    # start with the same sample); the first answer of a random order is right 3 times in 7
    many = [g.ScoredCall("p", "x", float(i < 3), str(i)) for i in range(7)]
    score, drawn = g.expected_vote_label(many, 7, 1)
    assert drawn == 1.0 and abs(score - 3 / 7) < 0.1


def traces(n: int, seed: int) -> list[g.ScoredCall]:
    """`coder` answers three times per prompt. On sums its samples are right, wrong, right (a
    vote of three is always right, one sample 2/3 of the time); on reversals they are always
    right (a vote adds only cost). `words` answers once, right on a third of each."""
    rng = random.Random(seed)
    calls: list[g.ScoredCall] = []
    seen: set[str] = set()
    i = 0
    while len(seen) < n:
        i += 1
        if i % 2:
            prompt, expected = add_prompt(rng)
            said = [expected, f"{expected}1", expected]
            task = "add"
        else:
            prompt, expected = reverse_prompt(rng)
            said = [expected] * 3
            task = "reverse"
        if prompt in seen:  # one prompt, one set of samples
            continue
        seen.add(prompt)
        for answer in said:
            calls.append(g.ScoredCall(prompt, "coder", float(answer == expected), answer, task,
                                      100, 50, 4.0))  # fmt: skip
        right = i % 3 == 0
        calls.append(g.ScoredCall(prompt, "words", float(right), expected if right else "no", task,
                                  100, 20, 1.0))  # fmt: skip
    return calls


SLOTS = [("coder", "coder"), ("words", "words")]
COSTS = {"coder": 1.0, "words": 0.25}


def test_the_gate_learns_where_a_vote_of_samples_pays_for_its_calls(tmp_path):
    calls = traces(80, seed=1)
    gate = g.train(calls, votes=3, agree=2)
    vote = gate.votes["coder"]
    assert (vote.votes, vote.agree) == (3, 2)
    assert "words" not in gate.votes  # one sample per prompt: nothing to vote over
    # sums draw all three samples when the wrong one comes among the first two (4 of the 6
    # orders), else two; reversals always stop after two
    sums_share = sum(c.task == "add" for c in calls if c.agent == "words") / 80
    assert vote.samples == pytest.approx(8 / 3 * sums_share + 2 * (1 - sums_share), abs=1e-3)
    assert gate.tasks["add"]["accuracy"]["votes:coder"] == 1.0
    assert gate.tasks["add"]["accuracy"]["coder"] == pytest.approx(2 / 3, abs=1e-3)
    sums = [add_prompt(random.Random(500 + i))[0] for i in range(10)]
    spells = [reverse_prompt(random.Random(600 + i))[0] for i in range(10)]
    decide = dict(k=1, cost_weight=0.05, costs=COSTS)
    for p in sums:
        d = gate.decide(p, SLOTS, votes=True, **decide)
        assert (d.strategy, d.chosen, d.votes, d.agree) == ("votes", ["coder"], 3, 2), d.utilities
        assert d.ranking[0] == "coder"  # the fallback order starts with the voting agent
        assert gate.decide(p, SLOTS, **decide).strategy == "alone"  # not asked for: never
    for p in spells:  # a vote adds nothing here but calls
        d = gate.decide(p, SLOTS, votes=True, **decide)
        assert (d.strategy, d.chosen, d.votes) == ("alone", ["coder"], 1), d.utilities
    # a vote's cost is the agent's cost times the samples it draws: dear enough, never
    dear = dict(decide, cost_weight=2.0)
    assert all(gate.decide(p, SLOTS, votes=True, **dear).strategy == "alone" for p in sums)
    # the vote candidate survives a round trip through the gate file
    path = tmp_path / "gate.json"
    gate.save(path)
    again = g.load(path)
    assert again.votes == gate.votes
    assert again.decide(sums[0], SLOTS, votes=True, **decide).strategy == "votes"


def vote_gate(path: Path, single: float, voted: float, agree: int = 2) -> Path:
    """A gate that predicts the same for every prompt: `prog` alone `single`, a vote of its
    answers `voted` (stopping when `agree` agree), `t1` 0.4, mixing 0.01."""
    calls = [
        g.ScoredCall(f"question {i}", agent, float((i + j) % 2), str(j), "t", 10, 5)
        for i in range(8)
        for agent in ("prog", "t1")
        for j in range(2 if agent == "prog" else 1)
    ]
    gate = g.train(calls, votes=3, agree=agree)
    preds = [(gate.agents["prog"], single), (gate.agents["t1"], 0.4), (gate.mix, 0.01),
             (gate.votes["prog"], voted)]  # fmt: skip
    for predictor, p in preds:
        predictor.weights = [0.0] * len(predictor.weights)
        predictor.bias = math.log(p / (1 - p))
    gate.save(path)
    return path


def voting_mixture(url: str, prog: str, gate: Path, votes: bool = True) -> dict:
    agents = {
        "prog": {"provider": "openai", "base_url": url, "model": prog, "kind": "program",
                 "retries": 0},
        "t1": {"provider": "openai", "base_url": url, "model": "ok:Answer: 7"},
    }  # fmt: skip
    return {"name": "voting", "deadline_s": 20, "retries": 0, "agents": agents,
            "aggregator": "t1", "layers": [{"agents": ["prog", "t1"]}],
            "gate": {"path": str(gate), "k": 2, "votes": votes}}  # fmt: skip


def run(cfg: dict):
    moa = MoA(parse_config(cfg), log=False)

    async def go():
        stream = moa.stream("What is 40 + 2?")
        return [p async for p in stream], stream.result

    return asyncio.run(go())


def test_a_vote_asks_again_until_two_answers_agree_and_answers_with_them(scripted, tmp_path):
    gate = vote_gate(tmp_path / "gate.json", single=0.5, voted=0.9)
    model = "seq:print(41)  # vote a|||print(6 * 7)|||print(40 + 2)|||print(0)"
    pieces, answer = run(voting_mixture(scripted.url, model, gate))
    assert answer.gate["strategy"] == "votes" and answer.gate["votes"] == 3
    assert answer.answer == "42" and answer.outcome == "ok"
    # three programs asked for (the first two disagreed), none after two agreed
    assert [c.agent for c in answer.calls] == ["prog#1", "prog#2", "prog#3"]
    assert [c.response for c in answer.calls] == ["41", "42", "42"]
    # every program streams as reasoning while the vote goes on; the answer comes last
    assert all(isinstance(p, Reasoning) for p in pieces[:-1]) and pieces[-1] == "42"
    assert "print(41)" in answer.reasoning and "print(40 + 2)" in answer.reasoning
    assert "the vote: 42, 2 of 3 answers" in answer.reasoning


def test_two_agreeing_answers_end_the_vote_after_two_calls(scripted, tmp_path):
    gate = vote_gate(tmp_path / "gate.json", single=0.5, voted=0.9)
    model = "seq:print(42)  # vote b|||print(6 * 7)|||print(1)"
    _, answer = run(voting_mixture(scripted.url, model, gate))
    assert answer.answer == "42"
    assert [c.agent for c in answer.calls] == ["prog#1", "prog#2"]


def test_a_failed_program_is_no_vote_and_no_answer_at_all_falls_back(scripted, tmp_path):
    gate = vote_gate(tmp_path / "gate.json", single=0.5, voted=0.9)
    # a failed program is retried with its error shown, as alone, within the vote's 3 calls:
    # its fix answers 5, the last call 6; the tie goes to the earliest
    model = "seq:print(1 / 0)  # vote c|||print(5)|||print(6)|||print(6)"
    cfg = voting_mixture(scripted.url, model, gate)
    cfg["agents"]["prog"]["retries"] = 1
    _, answer = run(cfg)
    assert [c.outcome for c in answer.calls] == ["ok", "ok"]
    assert [len(c.programs) for c in answer.calls] == [2, 1]  # 3 model calls, no fourth
    assert answer.answer == "5"
    # every program fails: the next agent of the gate's ranking answers
    _, answer = run(voting_mixture(scripted.url, "ok:print(1 / 0)  # vote d", gate))
    assert answer.answer == "Answer: 7"
    assert [(c.agent, c.outcome) for c in answer.calls] == [
        ("prog#1", "error"), ("prog#2", "error"), ("prog#3", "error"), ("t1", "ok")
    ]  # fmt: skip


def test_with_agree_1_the_agent_is_asked_again_only_while_it_gives_no_answer(scripted, tmp_path):
    """The packaged gate's rule: a failed program (or one that printed nothing) is followed by a
    fresh sample; the first answer ends it, with no vote line."""
    gate = vote_gate(tmp_path / "gate.json", single=0.5, voted=0.9, agree=1)
    model = "seq:print(1 / 0)  # until f|||print()|||print(40 + 2)|||print(7)"
    pieces, answer = run(voting_mixture(scripted.url, model, gate))
    assert answer.gate["strategy"] == "votes" and answer.gate["agree"] == 1
    assert [c.agent for c in answer.calls] == ["prog#1", "prog#2", "prog#3"]
    assert answer.answer == "42" and pieces[-1] == "42"
    assert "the vote:" not in answer.reasoning
    _, answer = run(voting_mixture(scripted.url, "seq:print(6 * 7)  # until g|||print(1)", gate))
    assert answer.answer == "42" and [c.agent for c in answer.calls] == ["prog#1"]


def test_votes_only_where_the_gate_predicts_they_pay_and_only_when_asked(scripted, tmp_path):
    model = "ok:print(40 + 2)  # vote e"
    # a vote predicted no better than one answer: one call
    gate = vote_gate(tmp_path / "flat.json", single=0.8, voted=0.8)
    _, answer = run(voting_mixture(scripted.url, model, gate))
    assert answer.gate["strategy"] == "alone" and [c.agent for c in answer.calls] == ["prog"]
    # the mixture does not ask for votes: one call, however much they would pay
    gate = vote_gate(tmp_path / "steep.json", single=0.5, voted=0.95)
    _, answer = run(voting_mixture(scripted.url, model, gate, votes=False))
    assert answer.gate["strategy"] == "alone" and [c.agent for c in answer.calls] == ["prog"]


def test_a_vote_is_not_replayed_from_single_runs(tmp_path):
    """A vote needs new samples: an eval runs it for real instead of reusing one single run."""
    gate_path = vote_gate(tmp_path / "gate.json", single=0.5, voted=0.9)
    cfg = parse_config(voting_mixture("http://127.0.0.1:9/v1", "ok:x", gate_path))
    gate = g.load(gate_path)
    assert plan_run(cfg, gate, "What is 1 + 1?").votes == 3
    item = Item(0, "What is 1 + 1?", "2")
    singles = {
        a: ItemResult("t", item, f"single:{a}", a, 0, "2", "2", 1.0, False, None, 0.1, 1.0, 1, 5, 1,
                      None)
        for a in ("prog", "t1")
    }  # fmt: skip
    assert replay_gated(cfg, gate, singles) is None
    cfg.gate.votes = False
    assert replay_gated(cfg, gate, singles) is not None


def test_gate_train_and_show_on_the_command_line(tmp_path):
    """`mixkit gate train` learns the vote candidate from a JSONL with several samples per
    prompt, `gate show` prints its column; a vote that cannot agree is one clear line."""
    import dataclasses
    import json

    from tests.in_process import run_in_process

    calls = tmp_path / "calls.jsonl"
    calls.write_text("".join(json.dumps(dataclasses.asdict(c)) + "\n" for c in traces(40, 2)))
    gate = tmp_path / "gate.json"
    out = run_in_process(
        "gate", "train", "--jsonl", str(calls), "-o", str(gate), env={"COLUMNS": "200"}
    )
    assert out.returncode == 0, out.stderr
    assert "votes:coder = up to 3 answers until 2 agree" in " ".join(out.stdout.split())
    assert set(g.load(gate).votes) == {"coder"}
    shown = run_in_process("gate", "show", str(gate), env={"COLUMNS": "200"})
    assert shown.returncode == 0 and "votes:coder" in shown.stdout
    until = run_in_process("gate", "train", "--jsonl", str(calls), "-o", str(gate),
                           "--agree", "1", env={"COLUMNS": "200"})  # fmt: skip
    assert until.returncode == 0, until.stderr
    assert "votes:coder = asked until it answers, up to 3 answers" in " ".join(until.stdout.split())
    assert set(g.load(gate).votes) == {"coder"}  # `words` answered once per prompt: no candidate
    bad = run_in_process("gate", "train", "--jsonl", str(calls), "-o", str(tmp_path / "x.json"),
                         "--votes", "3", "--agree", "4")  # fmt: skip
    assert bad.returncode == 2 and "--agree (4) is more than --votes (3)" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.json").exists()
