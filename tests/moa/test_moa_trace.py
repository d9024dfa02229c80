"""The SQLite trace: named append-only migrations, runs as trees, conversations, layer summaries."""

from __future__ import annotations

import sqlite3

from mixkit.moa import trace
from mixkit.moa.agents import CallRecord


def call(layer, agent, latency, outcome="ok", error=None, tokens=(10, 5)):
    return CallRecord(
        layer=layer,
        agent=agent,
        provider="local",
        model="m",
        latency_s=latency,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        outcome=outcome,
        error=error,
    )


def run_row(run_id, conversation_id, t, answer="A", outcome="ok"):
    return {
        "id": run_id,
        "conversation_id": conversation_id,
        "started_at": t,
        "preset": "p",
        "question": "Q",
        "messages": [{"role": "user", "content": f"Q{t}"}],
        "answer": answer,
        "outcome": outcome,
        "error": None,
        "wall_s": 1.0,
        "critical_path_s": 0.9,
        "ttft_s": 0.5,
    }


def test_migrations_are_named_and_applied_once(tmp_path):
    db = trace.connect(tmp_path / "logs.db")
    names = [r[0] for r in db.execute("SELECT name FROM _migrations")]
    assert names == [name for name, _ in trace.MIGRATIONS]
    assert trace.migrate(db) == []  # idempotent
    db.close()
    assert trace.migrate(sqlite3.connect(tmp_path / "logs.db")) == []


def test_default_path_follows_mixkit_home(home):
    assert trace.default_db_path() == home / "logs.db"


def test_record_and_read_back_a_run_tree(tmp_path):
    db = trace.connect(tmp_path / "logs.db")
    calls = [
        call(1, "a", 2.0),
        call(1, "b", 3.0, "error", "Timeout: late", (7, 0)),
        call(2, "agg", 1.5),
    ]
    trace.record_run(db, run_row("r1", "c1", 1.0), calls)
    (run,) = trace.recent_runs(db)
    assert run["id"] == "r1" and trace.get_run(db, "r") == run
    rows = trace.run_calls(db, "r1")
    assert [(r["layer"], r["agent"], r["outcome"]) for r in rows] == [
        (1, "a", "ok"),
        (1, "b", "error"),
        (2, "agg", "ok"),
    ]
    summary = trace.layer_summary(rows)
    assert [(s["layer"], s["ok"], s["calls"], s["slowest_agent"]) for s in summary] == [
        (1, 1, 2, "b"),
        (2, 1, 1, "agg"),
    ]
    assert summary[0]["prompt_tokens"] == 17 and summary[0]["errors"] == ["b: Timeout: late"]


def test_conversation_continues_from_the_last_ok_run(tmp_path):
    db = trace.connect(tmp_path / "logs.db")
    trace.record_run(db, run_row("r1", "c1", 1.0, answer="first"), [])
    trace.record_run(db, run_row("r2", "c1", 2.0, answer=None, outcome="error"), [])
    assert trace.latest_conversation_id(db) == "c1"
    assert trace.conversation_messages(db, "c1") == [
        {"role": "user", "content": "Q1.0"},
        {"role": "assistant", "content": "first"},
    ]
    assert trace.conversation_messages(db, "nope") == []
