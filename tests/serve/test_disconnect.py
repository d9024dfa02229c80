"""A client that goes away cancels its run: the backend sees its connections dropped, no orphan work."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.helpers import logged_run, wait_for

Q = [{"role": "user", "content": "hi"}]


def test_closing_a_stream_cancels_the_aggregator_call(server, fresh_backend, home):
    body = {"model": "slow-mix", "messages": Q, "stream": True}
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", f"{server.url}/chat/completions", json=body) as r:
            run_id = r.headers["x-mixkit-run-id"]
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the slow aggregator has started talking
            assert fresh_backend.stats()["active"] == 1
        # leaving the block closes the connection mid-stream
    stats = wait_for(
        lambda: (s := fresh_backend.stats())["disconnected"] == 1 and s["active"] == 0 and s,
        what="the backend to see the aggregator's connection dropped",
    )
    assert stats["started"] == 2 and stats["completed"] == 1  # proposer done, aggregator cut off
    wait_for(lambda: server.health()["running"] == 0, what="the run slot to be released")
    run, calls = logged_run(home, run_id)
    assert run["outcome"] == "cancelled" and calls[-1]["outcome"] == "cancelled"


def test_a_non_streaming_client_that_gives_up_cancels_its_proposers(server, fresh_backend, home):
    body = {"model": "hang-mix", "messages": Q}
    with pytest.raises(httpx.ReadTimeout):
        # The proposers hang; the client stops waiting after 1 s and closes its connection.
        httpx.post(f"{server.url}/chat/completions", json=body, timeout=httpx.Timeout(60, read=1))
    stats = wait_for(
        lambda: (s := fresh_backend.stats())["disconnected"] == 2 and s["active"] == 0 and s,
        what="the backend to see both proposer connections dropped",
    )
    assert stats["started"] == 2 and stats["completed"] == 0
    wait_for(lambda: server.health()["running"] == 0, what="the run slot to be released")
    db_runs = wait_for(lambda: logged_runs_since(home, "hang-mix"), what="the run in the log")
    assert db_runs[-1]["outcome"] == "cancelled"
    _, calls = logged_run(home, db_runs[-1]["id"])
    assert [c["outcome"] for c in calls] == ["cancelled", "cancelled"]  # no aggregator call made


def logged_runs_since(home, preset: str) -> list[dict]:
    import sqlite3

    db = sqlite3.connect(home / "logs.db")
    db.row_factory = sqlite3.Row
    try:
        q = "SELECT * FROM runs WHERE preset = ? ORDER BY started_at"
        return [dict(r) for r in db.execute(q, (preset,))]
    finally:
        db.close()
