"""The run browser's reads of the log database: recent runs (searched, filtered), one run with
its calls, one call with the prompt it was sent.

The database is the one the server logs to (`$MIXKIT_HOME/logs.db`), opened read-only per
request: the server's log thread is its only writer. Columns added by later migrations (such as
`runs.gate_json`) are read when present, so an older database still browses.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TypeVar

from mixkit.moa import MoAConfig, ProgramAnswer, logs, program_messages, synthesis_messages

T = TypeVar("T")
CLIP = 300  # characters of the question and the answer in the list


def open_db(path: Path | None = None) -> sqlite3.Connection | None:
    """The log database, read-only; None when nothing has been logged yet."""
    path = path or logs.default_db_path()
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    return db


def _like(text: str) -> str:
    """`text` as a LIKE pattern that matches it literally anywhere."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_runs(
    db: sqlite3.Connection,
    *,
    q: str = "",
    mixture: str = "",
    outcome: str = "",
    before: float | None = None,
    limit: int = 50,
) -> list[dict]:
    """Newest first: each run with its clipped question and answer and its calls' totals.
    `q` matches the conversation, the answer or an id prefix; `before` pages by start time."""
    where: list[str] = []
    args: dict[str, str | float] = {}
    if q:
        where.append(
            "(r.question LIKE :q ESCAPE '\\' OR r.messages_json LIKE :q ESCAPE '\\'"
            " OR r.answer LIKE :q ESCAPE '\\' OR r.id LIKE :id)"
        )
        args.update(q=_like(q), id=q.replace("%", "").replace("_", "") + "%")
    if mixture:
        where.append("r.preset = :mixture")
        args["mixture"] = mixture
    if outcome:
        where.append("r.outcome = :outcome")
        args["outcome"] = outcome
    if before is not None:
        where.append("r.started_at < :before")
        args["before"] = before
    # The page of runs first (runs_started orders it), then only its calls are summed.
    sql = f"""
        WITH page AS (
            SELECT * FROM runs r {"WHERE " + " AND ".join(where) if where else ""}
            ORDER BY r.started_at DESC LIMIT :limit
        )
        SELECT r.id, r.conversation_id, r.started_at, r.preset, r.outcome, r.error,
               r.wall_s, r.critical_path_s, r.ttft_s,
               substr(r.question, 1, {CLIP}) AS question, substr(r.answer, 1, {CLIP}) AS answer,
               count(c.id) AS calls, coalesce(sum(c.outcome = 'ok'), 0) AS calls_ok,
               coalesce(sum(c.prompt_tokens), 0) AS prompt_tokens,
               coalesce(sum(c.completion_tokens), 0) AS completion_tokens
        FROM page r LEFT JOIN calls c ON c.run_id = r.id
        GROUP BY r.id ORDER BY r.started_at DESC"""
    return [dict(r) for r in db.execute(sql, {**args, "limit": limit})]


def logged_mixtures(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT DISTINCT preset FROM runs ORDER BY preset")]


def _json_column(run: dict, column: str) -> dict | None:
    """A JSON object column added by a later migration (`gate_json`, `early_exit_json` from the
    gated MoA), parsed; None when absent, NULL or not an object."""
    raw = run.pop(column, None)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _call(call: dict) -> dict:
    """A call row, a program agent's attempts (`programs_json`) parsed into `programs`."""
    raw = call.pop("programs_json", None)
    try:
        programs = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        programs = None
    call["programs"] = programs if isinstance(programs, list) else None
    return call


def _proposal(call: dict) -> str:
    """A previous layer's answer as the engine showed it to the next: a program agent's with the
    program that printed it (engine/prompts.py)."""
    ran = [p for p in call.get("programs") or [] if p.get("status") == "ok"]
    if not ran:
        return call["response"]
    last = ran[-1]
    return ProgramAnswer(call["response"], last["program"], last.get("output", ""), "ok")


def get_run(db: sqlite3.Connection, run_id: str) -> dict | None:
    """One run (exact id): the run, its messages, its calls, its gate and its conversation."""
    row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    run = dict(row)
    run["messages"] = json.loads(run.pop("messages_json"))
    gate, early_exit = _json_column(run, "gate_json"), _json_column(run, "early_exit_json")
    structured = _json_column(run, "structured_json")  # response_format, tools, validation
    rows = db.execute("SELECT * FROM calls WHERE run_id = ? ORDER BY layer, id", (run_id,))
    calls = [_call(dict(c)) for c in rows]
    turns = db.execute(
        "SELECT id, started_at, outcome, substr(question, 1, 120) AS question FROM runs"
        " WHERE conversation_id = ? ORDER BY started_at",
        (run["conversation_id"],),
    )
    return {
        "run": run,
        "calls": calls,
        "gate": gate,
        "early_exit": early_exit,
        "structured": structured,
        "conversation": [dict(t) for t in turns],
    }


def call_prompt(run: dict, calls: list[dict], call: dict, cfg: MoAConfig | None) -> list[dict]:
    """The messages `call` was sent, rebuilt as the engine builds them: layer 1 gets the
    conversation; each later layer (and the aggregator) the synthesis prompt over the previous
    layer's answers that succeeded, in slot order; the agent's persona first."""
    conversation = run["messages"]
    previous = [
        _proposal(c) for c in calls if c["layer"] == call["layer"] - 1 and c["outcome"] == "ok"
    ]
    chars = cfg.reference_chars if cfg else MoAConfig.model_fields["reference_chars"].default
    messages = synthesis_messages(conversation, previous, chars) if previous else conversation
    name = re.split(r"[#@]", call["agent"])[0]  # "qwen#2": a repeated slot; "agg@1": a step
    agent = cfg.agents.get(name) if cfg else None
    if agent is not None and agent.kind == "program":  # asked for a program (agents/program.py)
        messages = program_messages(messages)
    if agent is None or not agent.system:
        return messages
    if messages and messages[0]["role"] == "system":
        merged = f"{agent.system}\n\n{messages[0]['content']}"
        return [{"role": "system", "content": merged}, *messages[1:]]
    return [{"role": "system", "content": agent.system}, *messages]


def prompt_note(cfg: MoAConfig | None, call: dict) -> str | None:
    """Why `call_prompt` may differ from what the call was really sent, or None."""
    if cfg is None:
        return "rebuilt without the mixture's config (this server does not serve it)"
    if len(call.get("programs") or []) > 1:
        return "the first request; each retry also showed the model its failed program and error"
    if call["layer"] <= 1:
        return None
    if cfg.staircase is not None:
        return (
            "staircase streaming: the call started on the proposals' first chunks, not all of them"
        )
    if cfg.gate is not None and cfg.gate.combine == "synthesize" and cfg.gate.min_weight > 0:
        return "the gate may have dropped proposals weighted below its min_weight; all are shown"
    return None


def with_db(path: Path | None, read: Callable[[sqlite3.Connection], T], default: T) -> T:
    """`read(db)` on the log database, or `default` when there is none yet."""
    db = open_db(path)
    if db is None:
        return default
    with closing(db):
        return read(db)
