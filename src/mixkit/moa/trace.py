"""The SQLite schema and queries behind the run log: a run, its layers, one row per agent call.

The database is `logs.db` under `$MIXKIT_HOME` (default `~/.mixkit`), or a path given to the API.
Schema changes are named, append-only migrations: add a new one at the end, never edit an old one.
Nothing secret is stored: calls record the provider kind and model, never URLs' keys or headers.
Rows come back as dicts; `mixkit.moa.logs` is the typed API over them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from mixkit.moa.engine.result import Answer

MIGRATIONS: list[tuple[str, str]] = [
    (
        "m001_runs_and_calls",
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            started_at REAL NOT NULL,
            preset TEXT NOT NULL,
            question TEXT NOT NULL,
            messages_json TEXT NOT NULL,
            answer TEXT,
            outcome TEXT NOT NULL,
            error TEXT,
            wall_s REAL,
            critical_path_s REAL,
            ttft_s REAL
        );
        CREATE TABLE calls (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(id),
            layer INTEGER NOT NULL,
            agent TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            started_at REAL,
            latency_s REAL,
            ttft_s REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            attempts INTEGER,
            outcome TEXT NOT NULL,
            error TEXT,
            response TEXT
        );
        CREATE INDEX calls_run ON calls(run_id);
        CREATE INDEX runs_started ON runs(started_at);
        """,
    ),
    (
        "m002_gate_cost_evals",
        """
        ALTER TABLE runs ADD COLUMN gate_json TEXT;
        ALTER TABLE runs ADD COLUMN early_exit_json TEXT;
        ALTER TABLE runs ADD COLUMN cost_usd REAL;
        ALTER TABLE calls ADD COLUMN cost_usd REAL;
        CREATE TABLE eval_items (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            eval_id TEXT NOT NULL,
            run_id TEXT,
            started_at REAL NOT NULL,
            task TEXT NOT NULL,
            item INTEGER NOT NULL,
            system TEXT NOT NULL,
            agent TEXT,
            sample INTEGER NOT NULL,
            prompt TEXT NOT NULL,
            expected TEXT,
            answer TEXT,
            score REAL NOT NULL,
            ttft_s REAL,
            wall_s REAL,
            calls INTEGER,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd REAL
        );
        CREATE INDEX eval_items_eval ON eval_items(eval_id);
        CREATE INDEX eval_items_agent ON eval_items(agent);
        """,
    ),
    (
        "m003_run_deadline",
        """
        ALTER TABLE runs ADD COLUMN deadline_s REAL;
        """,
    ),
    (
        # structured output (engine/output.py): the response_format and tools a run was asked
        # for, the proposals' vote, whether the answer validated, its repairs and tool calls
        "m004_structured_output",
        """
        ALTER TABLE runs ADD COLUMN structured_json TEXT;
        """,
    ),
    (
        # program agents (agents/program.py): each attempt's program, status, output and error
        "m005_call_programs",
        """
        ALTER TABLE calls ADD COLUMN programs_json TEXT;
        """,
    ),
]


def default_db_path() -> Path:
    """`$MIXKIT_HOME/logs.db`, default `~/.mixkit/logs.db`."""
    home = os.environ.get("MIXKIT_HOME") or Path.home() / ".mixkit"
    return Path(home) / "logs.db"


def connect(path: str | Path | None = None) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the log database."""
    path = Path(path) if path else default_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30)
    db.row_factory = sqlite3.Row
    migrate(db)
    return db


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the migrations not yet applied, in order; return their names."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        with db:  # one transaction per migration
            for statement in filter(str.strip, sql.split(";")):
                db.execute(statement)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
        applied.append(name)
    return applied


def record_run(db: sqlite3.Connection, answer: Answer) -> None:
    """Write one finished run and its calls (one transaction)."""
    run = {
        "id": answer.run_id,
        "conversation_id": answer.conversation_id,
        "started_at": answer.started_at,
        "preset": answer.preset,
        "question": [m["content"] for m in answer.messages if m["role"] == "user"][-1],
        "messages_json": json.dumps(answer.messages),
        "answer": answer.answer,
        "outcome": answer.outcome,
        "error": answer.error,
        "wall_s": answer.wall_s,
        "critical_path_s": answer.critical_path_s,
        "ttft_s": answer.ttft_s,
        "gate_json": json.dumps(answer.gate) if answer.gate else None,
        "early_exit_json": json.dumps(answer.early_exit) if answer.early_exit else None,
        "cost_usd": answer.cost_usd,
        "deadline_s": answer.deadline_s,
        "structured_json": json.dumps(answer.structured) if answer.structured else None,
    }
    with db:
        db.execute(
            "INSERT INTO runs (id, conversation_id, started_at, preset, question, messages_json,"
            " answer, outcome, error, wall_s, critical_path_s, ttft_s, gate_json, early_exit_json,"
            " cost_usd, deadline_s, structured_json) VALUES (:id, :conversation_id, :started_at,"
            " :preset, :question, :messages_json, :answer, :outcome, :error, :wall_s,"
            " :critical_path_s, :ttft_s, :gate_json, :early_exit_json, :cost_usd, :deadline_s,"
            " :structured_json)",
            run,
        )
        db.executemany(
            "INSERT INTO calls (run_id, layer, agent, provider, model, started_at, latency_s, ttft_s,"
            " prompt_tokens, completion_tokens, attempts, outcome, error, response, cost_usd,"
            " programs_json) VALUES (:run_id, :layer, :agent, :provider, :model, :started_at,"
            " :latency_s, :ttft_s, :prompt_tokens, :completion_tokens, :attempts, :outcome, :error,"
            " :response, :cost_usd, :programs_json)",
            [
                {
                    **c.to_dict(),
                    "run_id": answer.run_id,
                    "programs_json": json.dumps(c.programs) if c.programs is not None else None,
                }
                for c in answer.calls
            ],
        )


def recent_runs(db: sqlite3.Connection, limit: int = 5) -> list[dict]:
    """The latest runs, newest first."""
    rows = db.execute("SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", (limit,))
    return [dict(r) for r in rows]


def get_run(db: sqlite3.Connection, run_id: str) -> dict | None:
    """One run by id or unique id prefix."""
    rows = db.execute(
        "SELECT * FROM runs WHERE substr(id, 1, ?) = ? ORDER BY started_at DESC",
        (len(run_id), run_id),
    ).fetchall()
    return dict(rows[0]) if len(rows) == 1 else None


def run_calls(db: sqlite3.Connection, run_id: str) -> list[dict]:
    """The calls of a run, in layer order."""
    rows = db.execute("SELECT * FROM calls WHERE run_id = ? ORDER BY layer, id", (run_id,))
    return [dict(r) for r in rows]


def conversation_messages(db: sqlite3.Connection, conversation_id: str) -> list[dict]:
    """The conversation so far: the last run's messages plus its answer as the assistant turn."""
    row = db.execute(
        "SELECT messages_json, answer FROM runs WHERE conversation_id = ? AND outcome = 'ok'"
        " ORDER BY started_at DESC LIMIT 1",
        (conversation_id,),
    ).fetchone()
    if row is None:
        return []
    return [*json.loads(row["messages_json"]), {"role": "assistant", "content": row["answer"]}]


def latest_conversation_id(db: sqlite3.Connection) -> str | None:
    row = db.execute(
        "SELECT conversation_id FROM runs WHERE outcome = 'ok' ORDER BY started_at DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


EVAL_ITEM_FIELDS = (
    "eval_id", "run_id", "started_at", "task", "item", "system", "agent", "sample", "prompt",
    "expected", "answer", "score", "ttft_s", "wall_s", "calls", "prompt_tokens",
    "completion_tokens", "cost_usd",
)  # fmt: skip


def record_eval_items(db: sqlite3.Connection, rows: list[dict]) -> None:
    """Write scored eval items (one transaction); `mixkit gate train --db` learns from them."""
    cols = ", ".join(EVAL_ITEM_FIELDS)
    marks = ", ".join(f":{c}" for c in EVAL_ITEM_FIELDS)
    with db:
        db.executemany(
            f"INSERT INTO eval_items ({cols}) VALUES ({marks})",
            [{c: r.get(c) for c in EVAL_ITEM_FIELDS} for r in rows],
        )


def eval_items(db: sqlite3.Connection, single_only: bool = True) -> list[dict]:
    """Scored eval items, oldest first; with `single_only`, only single-agent systems."""
    where = "WHERE agent IS NOT NULL" if single_only else ""
    rows = db.execute(f"SELECT * FROM eval_items {where} ORDER BY id")
    return [dict(r) for r in rows]
