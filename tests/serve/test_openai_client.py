"""The official `openai` client against the real server (uvicorn on a free port)."""

from __future__ import annotations

import httpx
import openai
import pytest

from mixkit.moa import list_presets
from mixkit.serve import RUN_ID_HEADER, ServeSettings
from tests.serve.helpers import ThreadServer, logged_run, mixture

QUESTION = [{"role": "user", "content": "Why is the sea salty?"}]


def client(url: str, key: str = "anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def test_models_lists_presets_and_configured_mixtures(server):
    ids = [m.id for m in client(server.url).models.list()]
    assert set(list_presets()) <= set(ids)
    assert {"mix", "gated-mix"} <= set(ids)
    assert client(server.url).models.retrieve("mix").id == "mix"
    with pytest.raises(openai.NotFoundError):
        client(server.url).models.retrieve("no-such-mixture")


def test_non_streaming_answer_usage_and_trace_agree_with_the_log(server, home):
    raw = client(server.url).chat.completions.with_raw_response.create(
        model="mix", messages=QUESTION
    )
    run_id = raw.headers[RUN_ID_HEADER]
    completion = raw.parse()
    run, calls = logged_run(home, run_id)
    assert run["outcome"] == "ok" and completion.id.endswith(run_id)
    assert [c["layer"] for c in calls] == [1, 1, 2]  # two proposers, one aggregator
    # The answer is exactly what the aggregator call returned, and usage sums every call.
    assert completion.choices[0].message.content == calls[-1]["response"] == run["answer"]
    assert completion.choices[0].message.content.strip()
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == sum(c["prompt_tokens"] for c in calls)
    assert completion.usage.completion_tokens == sum(c["completion_tokens"] for c in calls)
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion.model_extra["mixkit"]["run_id"] == run_id


def test_temperature_and_top_p_reach_the_final_aggregator(server, fresh_backend):
    c = client(server.url)
    c.chat.completions.create(model="sampling-mix", messages=QUESTION)
    configured = fresh_backend.stats()["sampling"]
    c.chat.completions.create(model="sampling-mix", messages=QUESTION, temperature=0.25, top_p=0.5)
    asked = fresh_backend.stats()["sampling"]
    assert (asked["agg-ok"]["temperature"], asked["agg-ok"]["top_p"]) == (0.25, 0.5)
    assert configured["agg-ok"]["temperature"] != 0.25  # the aggregator's own, when not asked
    # proposers keep their configured sampling: their diversity is what the aggregator mixes
    assert asked["ok"] == configured["ok"]


def test_answers_depend_on_the_conversation(server):
    c = client(server.url)
    a = c.chat.completions.create(model="mix", messages=QUESTION).choices[0].message.content
    b = c.chat.completions.create(
        model="mix",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Why is the sky blue?"}]},
        ],
    )
    assert b.choices[0].message.content != a  # the fake backend's words hash the prompt


def test_streaming_chunks_arrive_before_the_answer_is_finished(server, fresh_backend, home):
    """The aggregator (`gated`) sends one word, then waits for us: that word must reach us first."""
    stream = client(server.url).chat.completions.with_raw_response.create(
        model="gated-mix", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    run_id = stream.headers[RUN_ID_HEADER]
    chunks = stream.parse()
    pieces, usage, finish = [], None, None
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            if len(pieces) == 1:
                # The aggregator's call is still open on the backend: this is a real stream.
                assert fresh_backend.stats()["active"] == 1
                assert fresh_backend.stats()["completed"] == 1  # only the proposer finished
                fresh_backend.release()
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if chunk.usage:
            usage = chunk.usage
    run, calls = logged_run(home, run_id)
    assert len(pieces) > 1 and "".join(pieces) == calls[-1]["response"] == run["answer"]
    assert finish == "stop" and run["outcome"] == "ok"
    assert usage.completion_tokens == sum(c["completion_tokens"] for c in calls)
    assert usage.prompt_tokens == sum(c["prompt_tokens"] for c in calls)


def test_async_client_streams_too(server):
    async def go() -> str:
        c = openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=60)
        stream = await c.chat.completions.create(model="mix", messages=QUESTION, stream=True)
        return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])

    import asyncio

    assert asyncio.run(go()).strip()


@pytest.fixture(scope="module")
def auth_server(backend):
    settings = ServeSettings(api_key="s3cret-key")
    with ThreadServer([mixture("mix", backend.url, ["ok"], "ok")], settings) as s:
        yield s


def test_auth_on_refuses_missing_and_wrong_keys(auth_server):
    for key in ("wrong", "s3cret-key-but-longer", "s3cret-ke"):
        with pytest.raises(openai.AuthenticationError) as e:
            client(auth_server.url, key).models.list()
        assert e.value.status_code == 401
        assert e.value.body["code"] == "invalid_api_key"  # the SDK unwraps {"error": {...}}
        with pytest.raises(openai.AuthenticationError):
            client(auth_server.url, key).chat.completions.create(model="mix", messages=QUESTION)
    bare = httpx.post(f"{auth_server.url}/chat/completions", json={"model": "mix"})
    assert bare.status_code == 401
    assert set(bare.json()["error"]) == {"message", "type", "param", "code"}
    assert "s3cret" not in bare.text
    assert httpx.get(f"{auth_server.base}/health").json()["status"] == "ok"  # health is open


def test_auth_on_accepts_the_right_key(auth_server):
    c = client(auth_server.url, "s3cret-key")
    assert "mix" in [m.id for m in c.models.list()]
    answer = c.chat.completions.create(model="mix", messages=QUESTION)
    assert answer.choices[0].message.content.strip()
    pieces = [
        ch.choices[0].delta.content
        for ch in c.chat.completions.create(model="mix", messages=QUESTION, stream=True)
        if ch.choices and ch.choices[0].delta.content
    ]
    assert pieces


def test_auth_off_needs_no_key(server):
    r = httpx.post(
        f"{server.url}/chat/completions", json={"model": "mix", "messages": QUESTION}, timeout=60
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_mixkit_logs_shows_the_run_named_by_the_header(server, home, monkeypatch, capsys):
    import json
    import sys

    from mixkit.cli import main

    raw = client(server.url).chat.completions.with_raw_response.create(
        model="mix", messages=QUESTION
    )
    run_id = raw.headers[RUN_ID_HEADER]
    logged_run(home, run_id)  # wait until the server's log thread has written it
    monkeypatch.setattr(sys, "argv", ["mixkit", "logs", "--run", run_id[:12], "--json"])
    try:
        main()
    except SystemExit as e:
        assert not e.code
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown["id"] == run_id and shown["preset"] == "mix" and shown["outcome"] == "ok"
    assert shown["answer"] == raw.parse().choices[0].message.content
    assert len(shown["calls"]) == 3
