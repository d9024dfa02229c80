"""The run log: named append-only migrations, runs as trees, conversations, layer summaries,
read back through the `mixkit.moa.logs` API."""

from __future__ import annotations

import sqlite3

from mixkit.moa import Answer, CallRecord, SQLiteLog, logs, trace


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


def finished(run_id, conversation_id, t, answer="A", outcome="ok", calls=()):
    return Answer(
        answer=answer,
        run_id=run_id,
        conversation_id=conversation_id,
        preset="p",
        messages=[{"role": "user", "content": f"Q{t}"}],
        calls=list(calls),
        wall_s=1.0,
        critical_path_s=0.9,
        ttft_s=0.5,
        started_at=t,
        outcome=outcome,
    )


def test_migrations_are_named_and_applied_once(tmp_path):
    db = trace.connect(tmp_path / "logs.db")
    names = [r[0] for r in db.execute("SELECT name FROM _migrations")]
    assert names == [name for name, _ in trace.MIGRATIONS]
    assert trace.migrate(db) == []  # idempotent
    db.close()
    assert trace.migrate(sqlite3.connect(tmp_path / "logs.db")) == []


def test_default_path_follows_mixkit_home(home):
    assert logs.default_db_path() == home / "logs.db"


def test_record_and_read_back_a_run_tree(tmp_path):
    db = tmp_path / "logs.db"
    calls = [
        call(1, "a", 2.0),
        call(1, "b", 3.0, "error", "Timeout: late", (7, 0)),
        call(2, "agg", 1.5),
    ]
    SQLiteLog(db).write(finished("r1", "c1", 1.0, calls=calls))
    (run,) = logs.recent_runs(db=db)
    assert run.id == "r1" and run.question == "Q1.0" and logs.get_run("r", db=db) == run
    assert run.calls == calls  # every field of every call survives the round trip
    assert run.prompt_tokens == 27 and run.completion_tokens == 10
    summary = logs.layer_summary(run.calls)
    assert [(s.layer, s.ok, s.calls, s.slowest_agent) for s in summary] == [
        (1, 1, 2, "b"),
        (2, 1, 1, "agg"),
    ]
    assert summary[0].prompt_tokens == 17 and summary[0].errors == ["b: Timeout: late"]
    as_json = run.to_dict()
    assert as_json["id"] == "r1" and as_json["calls"][1]["error"] == "Timeout: late"


def test_get_run_needs_a_unique_prefix(tmp_path):
    db = tmp_path / "logs.db"
    for run_id in ("ab1", "ab2", "c_d"):
        SQLiteLog(db).write(finished(run_id, run_id, 1.0))
    assert logs.get_run("ab", db=db) is None  # two match
    assert logs.get_run("ab2", db=db).id == "ab2"
    assert logs.get_run("c%", db=db) is None  # a prefix, not a LIKE pattern
    assert logs.get_run("x", db=tmp_path / "none.db") is None
    assert logs.recent_runs(db=tmp_path / "none.db") == []


def test_conversation_continues_from_the_last_ok_run(tmp_path):
    db = tmp_path / "logs.db"
    SQLiteLog(db).write(finished("r1", "c1", 1.0, answer="first"))
    SQLiteLog(db).write(finished("r2", "c1", 2.0, answer="", outcome="error"))
    convo = logs.conversation(db=db)  # the latest conversation that answered
    assert convo is not None and convo.id == "c1"
    assert convo.messages == [
        {"role": "user", "content": "Q1.0"},
        {"role": "assistant", "content": "first"},
    ]
    assert logs.conversation("c1", db=db) == convo
    assert logs.conversation("nope", db=db) is None


def test_columns_added_by_a_later_migration_are_read_back(tmp_path):
    db = tmp_path / "logs.db"
    SQLiteLog(db).write(finished("r1", "c1", 1.0))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("ALTER TABLE runs ADD COLUMN later_column REAL")
        conn.execute("UPDATE runs SET later_column = 0.25")
    conn.close()
    (run,) = logs.recent_runs(db=db)
    assert run.extra["later_column"] == 0.25 and run.to_dict()["later_column"] == 0.25


def test_a_runs_deadline_is_logged_and_older_runs_read_none(tmp_path):
    db = tmp_path / "logs.db"
    run = finished("r1", "c1", 1.0)
    run.deadline_s = 7.5
    SQLiteLog(db).write(run)
    assert logs.get_run("r1", db=db).deadline_s == 7.5
    # a run written before m003 has no deadline: it reads back as None, not as an error
    old = sqlite3.connect(db)
    old.execute("UPDATE runs SET deadline_s = NULL")
    old.commit()
    old.close()
    assert logs.get_run("r1", db=db).deadline_s is None
