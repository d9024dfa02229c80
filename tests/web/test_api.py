"""The web app's JSON and SSE endpoints over HTTP (no browser): the live event stream, search
and paging of the log, and clear 4xx errors."""

from __future__ import annotations

import json
import uuid

import httpx

from tests.serve.helpers import logged_run
from tests.web.conftest import chat


def _events(base: str, body: dict) -> tuple[httpx.Response, list[tuple[str, dict]]]:
    """POST /api/runs; the response and its SSE events as (name, data)."""
    events = []
    with httpx.stream("POST", f"{base}/api/runs", json=body, timeout=30) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return response, events


def test_the_live_feed_streams_a_runs_events_in_order(serve, web_home):
    question = [{"role": "user", "content": "live feed question"}]
    response, events = _events(serve.base, {"model": "quick", "messages": question})
    assert response.headers["content-type"].startswith("text/event-stream")
    run_id = response.headers["x-mixkit-run-id"]
    names = [name for name, _ in events]
    assert all(name == data["type"] and data["run_id"] == run_id for name, data in events)
    assert names[0] == "run_start" and names[-1] == "run_end"
    assert events[0][1]["data"]["layers"] == [["p1", "p2"]]
    run, calls = logged_run(web_home, run_id)
    for call in calls:  # each call's tokens, in its own events, add up to its logged answer
        pieces = [d["text"] for n, d in events if n == "call_token" and d["agent"] == call["agent"]]
        assert "".join(pieces) == call["response"]
        ends = [d for n, d in events if n == "call_end" and d["agent"] == call["agent"]]
        assert ends[0]["data"]["outcome"] == call["outcome"] == "ok"
    answer = "".join(d["text"] for n, d in events if n == "answer_token")
    assert answer == run["answer"]
    assert events[-1][1]["data"]["outcome"] == "ok"
    # a later turn joins the conversation
    follow = [
        *question,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "more"},
    ]
    body = {"model": "quick", "messages": follow, "conversation_id": run_id}
    second, _ = _events(serve.base, body)
    assert logged_run(web_home, second.headers["x-mixkit-run-id"])[0]["conversation_id"] == run_id


def test_a_failed_run_ends_with_an_error_event(serve):
    messages = [{"role": "user", "content": "this fails"}]
    _, events = _events(serve.base, {"model": "broken", "messages": messages})
    names = [name for name, _ in events]
    assert names[-2:] == ["run_end", "error"]
    assert events[-2][1]["data"]["outcome"] == "error"
    assert "p1" in events[-1][1]["error"]["message"]  # names the agents that failed


def test_bad_live_requests_are_4xx_json(serve):
    user = [{"role": "user", "content": "x"}]
    cases = [
        ({"model": "nope", "messages": user}, 404),
        ({"model": "quick", "messages": []}, 400),
        ({"model": "quick", "messages": user, "conversation_id": "../etc"}, 400),
        ({"model": "quick", "messages": user, "max_tokens": "8"}, 400),
    ]
    for body, status in cases:
        response, _ = _events(serve.base, body)
        assert response.status_code == status, body
        assert response.json()["error"]["message"], body


def test_search_is_literal_and_paging_returns_older_runs(serve, web_home):
    marker = uuid.uuid4().hex[:8]
    ids = []
    for text in (f"{marker} 100% sure", f"{marker} 100x sure", f"{marker} température"):
        ids.append(chat(serve.base, "quick", text).headers["x-mixkit-run-id"])
        logged_run(web_home, ids[-1])

    def runs(**params) -> list[dict]:
        response = httpx.get(f"{serve.base}/api/runs", params=params, timeout=10)
        assert response.status_code == 200
        return response.json()["runs"]

    assert [r["id"] for r in runs(q=f"{marker} 100%")] == [ids[0]]  # % is not a wildcard
    assert [r["id"] for r in runs(q="température")][:1] == [ids[2]]
    assert [r["id"] for r in runs(q=ids[1][:10])] == [ids[1]]  # an id prefix
    page = runs(q=marker, limit=2)
    assert [r["id"] for r in page] == ids[:0:-1]  # newest first
    older = runs(q=marker, limit=2, before=page[-1]["started_at"])
    assert [r["id"] for r in older] == [ids[0]]
    assert page[0]["calls"] == page[0]["calls_ok"] == 3
    assert httpx.get(f"{serve.base}/api/runs/{'0' * 32}", timeout=10).status_code == 404


def test_a_calls_prompt_says_when_the_engine_built_it_differently(serve, web_home):
    def notes(mixture: str) -> dict[str, str | None]:
        run_id = chat(serve.base, mixture, "prompt note").headers["x-mixkit-run-id"]
        _, calls = logged_run(web_home, run_id)
        out = {}
        for call in calls:
            url = f"{serve.base}/api/runs/{run_id}/calls/{call['id']}"
            body = httpx.get(url, timeout=10).json()
            assert body["prompt"][-1] == {"role": "user", "content": "prompt note"}
            out[call["agent"]] = body["prompt_note"]
        return out

    assert notes("quick") == {"p1": None, "p2": None, "agg": None}
    stairs = notes("stairs")  # the aggregator started on the proposals' first chunks
    assert stairs["p1"] is None and "staircase" in stairs["agg@1"]  # the staircase's step 1
