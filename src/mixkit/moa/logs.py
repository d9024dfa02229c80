"""The run log as a Python API: where runs are written (a LogSink) and how to read them back.

    from mixkit.moa import logs
    for run in logs.recent_runs(3):
        print(run.id, run.outcome, [(c.layer, c.agent, c.latency_s) for c in run.calls])
    run = logs.get_run("3f2a")                       # by id or unique id prefix
    convo = logs.conversation()                      # the latest conversation, to continue it
    moa.ask("And then?", messages=convo.messages, conversation_id=convo.id)

`mixkit logs` and `mixkit ask --continue` are thin faces over these functions. Every function
takes `db=` (a path; default `$MIXKIT_HOME/logs.db`, see `default_db_path`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from mixkit.moa import trace
from mixkit.moa.agents.agent import CallRecord
from mixkit.moa.agents.providers.base import Message
from mixkit.moa.engine.result import Answer, CallTotals

default_db_path = trace.default_db_path


class LogSink(Protocol):
    """Where a MoA writes each finished run: `MoA(config, sink=...)`. Called once per run, at its
    end (cancelled and failed runs included), on the event loop thread: a slow sink should hand
    the work to another thread, as the server's background writer does."""

    def write(self, answer: Answer) -> None: ...


class SQLiteLog:
    """The default sink: each run and its calls go to the SQLite log at once (one transaction)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None

    def write(self, answer: Answer) -> None:
        db = trace.connect(self.path)
        try:
            trace.record_run(db, answer)
        finally:
            db.close()


_CALL_FIELDS = {f.name for f in fields(CallRecord)}


@dataclass
class LoggedRun(CallTotals):
    """One logged run and its calls, as read back from the log."""

    id: str
    conversation_id: str
    started_at: float
    preset: str
    question: str
    messages: list[Message]
    answer: str | None
    outcome: str
    error: str | None
    wall_s: float | None
    critical_path_s: float | None
    ttft_s: float | None
    calls: list[CallRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # columns added by later migrations
    gate: dict[str, Any] | None = None  # the gate's decision, for gated runs
    early_exit: dict[str, Any] | None = None
    deadline_s: float | None = None  # None for runs logged before it was recorded
    structured: dict[str, Any] | None = None  # structured output / tools (engine/output.py)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of `mixkit logs --json` (one element)."""
        skip = ("messages", "extra", "calls")
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out.update(self.extra)
        out["calls"] = [c.to_dict() for c in self.calls]
        return out


@dataclass
class Conversation:
    """A conversation to continue: its id and its turns so far (the last answer included)."""

    id: str
    messages: list[Message]


@dataclass
class LayerSummary:
    """One layer of a run: calls ok / total, its slowest call (its share of the critical path)."""

    layer: int
    ok: int = 0
    calls: int = 0
    slowest_s: float = 0.0
    slowest_agent: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)  # "agent: error" per failed call


def _call(row: dict[str, Any]) -> CallRecord:
    """A logged call; a program agent's attempts come back as CallRecord.programs."""
    raw = row.pop("programs_json", None)
    row["programs"] = json.loads(raw) if raw else None
    return CallRecord(**{k: v for k, v in row.items() if k in _CALL_FIELDS})


def _run(db: Any, row: dict[str, Any]) -> LoggedRun:
    calls = [_call(c) for c in trace.run_calls(db, row["id"])]
    messages = json.loads(row.pop("messages_json"))
    for key in ("gate", "early_exit", "structured"):
        raw = row.pop(f"{key}_json", None)
        row[key] = json.loads(raw) if raw else None
    known = {f.name for f in fields(LoggedRun)}
    extra = {k: v for k, v in row.items() if k not in known}
    kept = {k: v for k, v in row.items() if k in known}
    return LoggedRun(**kept, messages=messages, calls=calls, extra=extra)


def recent_runs(n: int = 3, *, db: str | Path | None = None) -> list[LoggedRun]:
    """The latest `n` runs, newest first (none if nothing was logged yet)."""
    path = Path(db) if db is not None else default_db_path()
    if not path.exists():
        return []
    conn = trace.connect(path)
    try:
        return [_run(conn, row) for row in trace.recent_runs(conn, n)]
    finally:
        conn.close()


def get_run(run_id: str, *, db: str | Path | None = None) -> LoggedRun | None:
    """One run by id or unique id prefix; None if no run or several match."""
    path = Path(db) if db is not None else default_db_path()
    if not path.exists():
        return None
    conn = trace.connect(path)
    try:
        row = trace.get_run(conn, run_id)
        return _run(conn, row) if row is not None else None
    finally:
        conn.close()


def conversation(
    conversation_id: str | None = None, *, db: str | Path | None = None
) -> Conversation | None:
    """The conversation `conversation_id` (default: the latest one that answered) with its turns
    so far, ready to continue; None if there is none."""
    path = Path(db) if db is not None else default_db_path()
    if not path.exists():
        return None
    conn = trace.connect(path)
    try:
        cid = conversation_id or trace.latest_conversation_id(conn)
        messages = trace.conversation_messages(conn, cid) if cid else []
    finally:
        conn.close()
    return Conversation(cid, messages) if cid and messages else None


def layer_summary(calls: list[CallRecord]) -> list[LayerSummary]:
    """Per layer: calls ok / total, the slowest call, tokens, and each failed call's error."""
    layers: dict[int, LayerSummary] = {}
    for c in calls:
        s = layers.setdefault(c.layer, LayerSummary(c.layer))
        s.calls += 1
        s.ok += c.outcome == "ok"
        s.prompt_tokens += c.prompt_tokens or 0
        s.completion_tokens += c.completion_tokens or 0
        # Every call of a layer (failed and cancelled ones too) held the layer up until it ended.
        if (c.latency_s or 0.0) >= s.slowest_s:
            s.slowest_s, s.slowest_agent = c.latency_s or 0.0, c.agent
        if c.error:
            s.errors.append(f"{c.agent}: {c.error}")
    return [layers[k] for k in sorted(layers)]
