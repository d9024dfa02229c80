"""End to end on real models: in-process llama.cpp agents and a real llama_cpp.server over HTTP."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time

import pytest

from mixkit.errors import ProviderError
from mixkit.moa import MoA, ask, parse_config
from mixkit.moa.agents.agent import model_calls
from mixkit.moa.agents.providers import local
from mixkit.moa.agents.providers.model_files import QWEN_SHA256, QWEN_SIZE, assemble_qwen

SMOL = {
    "provider": "local",
    "model": "smollm2-135m",
    "max_tokens": 8,
    "temperature": 0.7,
    "n_ctx": 1024,
}


def db_calls(home, run_id):
    db = sqlite3.connect(home / "logs.db")
    db.row_factory = sqlite3.Row
    return [
        dict(r)
        for r in db.execute("SELECT * FROM calls WHERE run_id = ? ORDER BY layer, id", (run_id,))
    ]


def check_trace_matches(answer, home):
    rows = db_calls(home, answer.run_id)
    assert len(rows) == len(answer.calls)
    for row, call in zip(rows, answer.calls, strict=False):
        assert (row["layer"], row["agent"], row["outcome"]) == (
            call.layer,
            call.agent,
            call.outcome,
        )
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            call.prompt_tokens,
            call.completion_tokens,
        )


def test_two_layer_local_moa_answers_and_traces(home):
    cfg = parse_config(
        {"agents": {"smol": SMOL}, "layers": [{"agents": ["smol", "smol"]}], "aggregator": "smol"}
    )
    pieces: list[str] = []
    answer = ask("Name a primary colour.", config=cfg, on_token=pieces.append)
    assert answer.answer.strip() and "".join(pieces) == answer.answer
    assert [(c.layer, c.agent) for c in answer.calls] == [(1, "smol#1"), (1, "smol#2"), (2, "smol")]
    for call in answer.calls:
        assert call.outcome == "ok" and call.error is None
        assert call.prompt_tokens > 0 and 0 < call.completion_tokens <= 8
        assert 0 <= call.ttft_s <= call.latency_s
    # the aggregator read both proposals, so its prompt is longer than a proposer's
    assert answer.calls[2].prompt_tokens > answer.calls[0].prompt_tokens
    assert answer.critical_path_s <= answer.wall_s
    check_trace_matches(answer, home)


@pytest.mark.parametrize("budget", [2, 3])
def test_local_agents_run_at_once_as_far_as_the_core_budget_allows(monkeypatch, budget):
    # Three one-thread calls in one layer: with 3 cores all three decode at once; with 2, two do
    # and the third waits for a core. Serializing them, or overrunning the budget, fails this.
    monkeypatch.setattr(local.CORES, "total", budget)
    monkeypatch.setattr(local.CORES, "free", budget)
    monkeypatch.setattr(local.CORES, "peak", 0)
    monkeypatch.setattr(local.CORES, "peak_calls", 0)
    cfg = parse_config(
        {"agents": {"smol": SMOL}, "layers": [{"agents": ["smol"] * 3}], "aggregator": "smol"}
    )
    answer = MoA(cfg, log=False).run("Say hi.")
    assert answer.answer.strip()
    assert local.CORES.peak_calls == budget  # that many calls decoded at once, one thread each
    assert local.CORES.peak == budget  # and never more threads than the budget
    assert local.CORES.free == local.CORES.total and local.CORES.calls == 0


def test_local_deadline_stops_generation():
    slow = {**SMOL, "max_tokens": 2000, "temperature": 1.0}
    cfg = parse_config(
        {
            "agents": {"slow": slow},
            "layers": [],
            "aggregator": "slow",
            "deadline_s": 0.3,
            "retries": 0,
        }
    )
    with pytest.raises(ProviderError, match="deadline"):
        MoA(cfg, log=False).run("Write a very long story about the sea.")
    bound = time.monotonic() + 20  # the worker thread notices the stop at its next token
    while local.CORES.free != local.CORES.total and time.monotonic() < bound:
        time.sleep(0.05)
    assert local.CORES.free == local.CORES.total


def test_moa_over_a_real_llama_cpp_server(llama_server, home):
    http = {
        "provider": "openai",
        "base_url": llama_server,
        "model": "smollm",
        "max_tokens": 8,
        "temperature": 0.7,
    }
    cfg = parse_config(
        {
            "agents": {"http": http, "smol": SMOL, "agg": {**http, "temperature": 0.0}},
            "layers": [{"agents": ["http", "smol"]}],
            "aggregator": "agg",
        }
    )
    answer = MoA(cfg).run("What is the capital of France?")
    assert answer.answer.strip()
    assert [(c.layer, c.agent, c.provider) for c in answer.calls] == [
        (1, "http", "openai"),
        (1, "smol", "local"),
        (2, "agg", "openai"),
    ]
    for call in answer.calls:
        assert call.outcome == "ok" and 0 < call.completion_tokens <= 8 and call.ttft_s is not None
    check_trace_matches(answer, home)


def test_qwen_is_assembled_verified_and_atomic(tmp_path):
    target = tmp_path / "qwen.gguf"
    assert assemble_qwen(target) == target
    assert target.stat().st_size == QWEN_SIZE
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    assert digest == QWEN_SHA256
    assert [p.name for p in tmp_path.iterdir()] == ["qwen.gguf"]  # no temp file left behind


def test_concurrent_model_loads_leave_stdout_alone(smollm_path):
    """llama.cpp silences loads by swapping fds 1/2; concurrent loads must not lose stdout."""
    from pathlib import Path

    before = os.fstat(1)
    pool = local.LlamaPool()
    threads = [threading.Thread(target=pool.take, args=(Path(smollm_path), 256)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = os.fstat(1)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_the_default_gated_preset_answers_on_the_embedded_models(home):
    """`make run`'s preset, for real: the packaged gate chooses, one local model answers, and the
    run's trace holds the gate's choice."""
    from mixkit.moa import DEFAULT_PRESET, load_preset

    assert DEFAULT_PRESET == "gated"
    moa = MoA(load_preset(DEFAULT_PRESET))
    answer = moa.run("What is 12 + 30? End with 'Answer: <number>'.", max_tokens=48)
    gate = answer.gate
    assert gate is not None and answer.answer.strip()
    assert {"qwen", "qwen-program", "mix", "votes:qwen-program"} <= set(gate["scores"])
    assert set(gate["ranking"]) == {"qwen", "qwen-program"}  # the preset's agents, no others
    consulted = {c.agent.split("#")[0] for c in answer.calls}  # a vote's calls: qwen-program#2
    assert consulted <= set(gate["chosen"]) and not consulted & set(gate["skipped"])
    if gate["strategy"] == "alone":
        assert len(answer.calls) == 1 and answer.calls[0].outcome == "ok"
    if gate["strategy"] == "votes":  # asked until it answers: at most three model calls
        voted = [c for c in answer.calls if c.agent.startswith("qwen-program#")]
        assert gate["agree"] == 1 and 1 <= model_calls(voted) <= gate["votes"] == 3
        assert all(c.outcome != "ok" for c in voted[:-1])  # asked again only after a failure
    check_trace_matches(answer, home)
