"""Gated MoA end to end, over real HTTP agents on 127.0.0.1 and the real `mixkit` CLI:
collect traces with `mixkit eval`, learn a gate with `mixkit gate train`, route held-out prompts;
early exit; falling back when the chosen agent fails; clear errors for bad gate and task files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mixkit.moa import MoA, parse_config
from mixkit.moa.gate import model as g
from tests.moa.planted import planted


@pytest.fixture
def server(scripted):
    return scripted


def mixkit(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {"MIXKIT_HOME": str(home), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-c", "from mixkit.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def tasks_file(path: Path, n: int, seed: int) -> Path:
    """Half sums (only `adder` gets them right), half reversals (only `speller` does)."""
    lines = [
        {"question": prompt, "expected": expected, "scorer": "number" if kind == "add" else "exact"}
        for kind, prompt, expected in planted(n, seed, unique=True)
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def gated_config(path: Path, url: str, gate_file: Path, **extra) -> Path:
    path.write_text(
        f'aggregator = "adder"\ndeadline_s = 10\nretries = 0\n'
        f'[gate]\npath = "{gate_file}"\nk = 2\n'
        f'[agents.adder]\nprovider = "openai"\nbase_url = "{url}"\nmodel = "solve:add"\n'
        f'[agents.speller]\nprovider = "openai"\nbase_url = "{url}"\nmodel = "solve:reverse"\n'
        '[[layers]]\nagents = ["adder", "speller"]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    )
    return path


def test_a_gate_learned_from_eval_traces_routes_each_prompt_to_its_specialist(server, tmp_path):
    home, db = tmp_path / "home", tmp_path / "evals.db"
    gate_file = tmp_path / "gate.json"
    cfg = gated_config(tmp_path / "two.toml", server.url, gate_file)
    train = tasks_file(tmp_path / "train.jsonl", 40, seed=1)
    out = mixkit(home, "eval", "-c", str(cfg), "--strategies", "single", "--tasks-file",
                 str(train), "--n", "40", "--db", str(db), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {r["strategy"]: r for r in json.loads(out.stdout)["rows"] if r["task"] == "train"}
    assert rows["single:adder"]["accuracy"] == rows["single:speller"]["accuracy"] == 0.5

    out = mixkit(home, "gate", "train", "--db", str(db), "-o", str(gate_file))
    assert out.returncode == 0, out.stderr
    learned = g.load(gate_file)
    assert set(learned.agents) == {"adder", "speller"} and learned.tasks["train"]["n"] == 40

    test = tasks_file(tmp_path / "test.jsonl", 20, seed=2)
    out = mixkit(home, "eval", "-c", str(cfg), "--strategies", "single,gated", "--tasks-file",
                 str(test), "--n", "20", "--db", str(db), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {r["strategy"]: r for r in json.loads(out.stdout)["rows"] if r["task"] == "test"}
    assert rows["gated"]["accuracy"] == 1.0
    assert rows["gated"]["accuracy"] > max(
        rows["single:adder"]["accuracy"], rows["single:speller"]["accuracy"]
    )
    assert rows["gated"]["calls"] == 1.0 and rows["gated"]["alone"] == 1.0
    # with the single runs there, `gated` reuses the chosen agent's run (evals/replay.py); alone,
    # it runs for real, and scores the same
    out = mixkit(home, "eval", "-c", str(cfg), "--strategies", "gated", "--tasks-file",
                 str(test), "--n", "20", "--db", str(db), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    real = {r["strategy"]: r for r in json.loads(out.stdout)["rows"] if r["task"] == "test"}
    assert real["gated"]["accuracy"] == 1.0 and real["gated"]["calls"] == 1.0

    # every gated run's trace holds the gate's scores and choice
    conn = sqlite3.connect(db)
    gates = [
        json.loads(r[0]) for r in conn.execute("SELECT gate_json FROM runs WHERE preset = 'two'")
    ]
    assert len(gates) == 20 and all(x["strategy"] == "alone" for x in gates)
    assert {x["chosen"][0] for x in gates} == {"adder", "speller"}
    assert all(set(x["scores"]) == {"adder", "speller", "mix"} for x in gates)
    out = mixkit(home, "logs", "--db", str(db), "-n", "1")
    assert out.returncode == 0 and "gate:" in out.stdout and "skipped" in out.stdout


def _planted_gate(tmp_path: Path, best: str, other: str) -> Path:
    calls = []
    for i in range(30):
        prompt = f"question number {i} about things"
        calls += [g.ScoredCall(prompt, best, 1.0, "x", "t", 10, 5),
                  g.ScoredCall(prompt, other, 0.5, "y", "t", 10, 5)]  # fmt: skip
    path = tmp_path / "gate.json"
    g.train(calls).save(path)
    return path


def _config(url: str, gate_file: Path, models: dict[str, str], layer: list[str], **top) -> dict:
    return {
        "name": "t",
        "aggregator": layer[0],
        "deadline_s": 5,
        "retries": 0,
        "gate": {"path": str(gate_file), "k": 2},
        "agents": {
            n: {"provider": "openai", "base_url": url, "model": m} for n, m in models.items()
        },
        "layers": [{"agents": layer}],
        **top,
    }


def test_a_chosen_agent_that_fails_falls_back_to_the_next_ranked_one(server, tmp_path):
    gate_file = _planted_gate(tmp_path, best="broken", other="backup")
    cfg = parse_config(_config(server.url, gate_file, {"broken": "fail500:fb", "backup": "ok:Answer: 7"},
                               ["broken", "backup"]))  # fmt: skip
    answer = MoA(cfg, log=False).run("question number 3 about things")
    assert answer.answer.strip() == "Answer: 7"
    assert answer.gate is not None and answer.gate["chosen"] == ["broken"]
    assert [(c.agent, c.outcome) for c in answer.calls] == [("broken", "error"), ("backup", "ok")]


def test_early_exit_fires_when_proposals_agree_and_skips_the_rest(server, tmp_path):
    models = {
        "a": "ok:so Answer: 42",
        "b": "ok:I get Answer: 42.0",
        "slow": "hang:ee",
        "agg": "ok:AGG",
    }
    data = {
        "name": "ee", "aggregator": "agg", "deadline_s": 20, "retries": 0,
        "early_exit": {"min_agree": 2},
        "agents": {n: {"provider": "openai", "base_url": server.url, "model": m} for n, m in models.items()},
        "layers": [{"agents": ["a", "b", "slow"]}, {"agents": ["a", "b"]}],
    }  # fmt: skip
    answer = MoA(parse_config(data), log=False).run("What is 6 * 7?")
    assert answer.answer == "so Answer: 42"
    assert answer.early_exit == {"layer": 1, "agreed": "42", "answers": 2, "skipped_layers": 1}
    outcomes = {c.agent: c.outcome for c in answer.calls}
    # no layer 2, no aggregator, and the hanging proposer was cancelled, not waited for
    assert outcomes == {"a": "ok", "b": "ok", "slow": "cancelled"}


def test_early_exit_does_not_fire_on_disagreeing_proposals(server, tmp_path):
    models = {"a": "ok:Answer: 41", "b": "ok:Answer: 42", "agg": "ok:Answer: 42 after all"}
    data = {
        "name": "ee2", "aggregator": "agg", "deadline_s": 20, "retries": 0,
        "early_exit": {"min_agree": 2},
        "agents": {n: {"provider": "openai", "base_url": server.url, "model": m} for n, m in models.items()},
        "layers": [{"agents": ["a", "b"]}],
    }  # fmt: skip
    answer = MoA(parse_config(data), log=False).run("What is 6 * 7?")
    assert answer.early_exit is None
    assert answer.answer == "Answer: 42 after all" and len(answer.calls) == 3


def test_a_gated_vote_streams_the_majority_answer_without_an_aggregator_call(server, tmp_path):
    gate_file = tmp_path / "gate.json"
    calls = []
    for i in range(30):  # each alone is right 2/3 of the time, the vote always: mixing pays
        prompt = f"vote question {i}"
        for j, agent in enumerate(("p", "q", "r")):
            right = i % 3 != j
            calls.append(
                g.ScoredCall(prompt, agent, float(right), "ok" if right else f"no{j}", "t", 10, 5)
            )
    g.train(calls).save(gate_file)
    models = {
        "p": "ok:Answer: 9",
        "q": "ok:Answer: 8",
        "r": "ok:It is 9. Answer: 9",
        "agg": "ok:AGG",
    }
    data = {**_config(server.url, gate_file, models, ["p", "q", "r"]), "aggregator": "agg"}
    data["gate"]["k"] = 3
    answer = MoA(parse_config(data), log=False).run("vote question 4")
    assert answer.gate["strategy"] == "mix"
    assert answer.answer in ("Answer: 9", "It is 9. Answer: 9")
    assert "agg" not in {c.agent for c in answer.calls} and len(answer.calls) == 3


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "not valid JSON"),
        ('{"version": 1, "features": "nope"}', "unknown gate features"),
    ],
)
def test_a_bad_gate_file_is_one_line_and_exit_2(server, tmp_path, content, words):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    cfg = gated_config(tmp_path / "c.toml", server.url, bad)
    out = mixkit(tmp_path / "home", "ask", "What is 1 + 2?", "-c", str(cfg))
    assert out.returncode == 2, out.stderr
    assert words in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize(
    "lines, words",
    [
        (['{"question": "q", "expected": "1", "scorer": "exact"}', "{oops"], ":2: not valid JSON"),
        (['{"question": "q", "scorer": "exact"}'], ":1: missing expected"),
        (
            ['{"question": "q", "expected": "x", "scorer": "number"}'],
            ":1: expected must be a number",
        ),
        (
            ['{"question": "q", "expected": "1", "scorer": "no_such_dataset"}'],
            ":1: unknown reasoning-gym",
        ),
    ],
)
def test_a_bad_tasks_file_names_its_line_and_exits_2(tmp_path, lines, words):
    f = tmp_path / "tasks.jsonl"
    f.write_text("\n".join(lines) + "\n")
    out = mixkit(tmp_path / "home", "eval", "-p", "moa-tiny", "--strategies", "single",
                 "--tasks-file", str(f))  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert words in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2
