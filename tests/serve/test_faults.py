"""A backend process dies mid-request: the client gets a quorum-degraded answer or a clean error,
never a hung connection."""

from __future__ import annotations

import httpx
import openai
import pytest

from mixkit.testing import FakeBackend
from tests.serve.helpers import ThreadServer, logged_run, mixture

Q = [{"role": "user", "content": "Why is the sea salty?"}]


@pytest.fixture
def doomed():
    """A second backend that exits (the whole process) two words into a `die` request."""
    with FakeBackend(ttft=0.01, gap=0.01) as b:
        yield b


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)


@pytest.mark.parametrize("stream", [False, True])
def test_a_proposer_whose_backend_dies_leaves_a_degraded_answer(backend, doomed, home, stream):
    cfg = mixture("mix", backend.url, ["ok", "die"], "ok", urls={"die": doomed.url})
    with ThreadServer([cfg]) as server:
        raw = client(server.url).chat.completions.with_raw_response.create(
            model="mix", messages=Q, stream=stream
        )
        parsed = raw.parse()
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
        else:
            text = parsed.choices[0].message.content
        assert doomed.proc.wait(10) is not None  # the backend really died
        run, calls = logged_run(home, raw.headers["x-mixkit-run-id"])
        assert text.strip() and text == run["answer"] and run["outcome"] == "ok"
        by_agent = {c["agent"]: c for c in calls}
        assert by_agent["p-ok"]["outcome"] == "ok" and by_agent["agg"]["outcome"] == "ok"
        assert by_agent["p-die"]["outcome"] == "error"  # the degraded part is explicit in the trace
        assert server.health()["running"] == 0


def test_an_aggregator_whose_backend_dies_midstream_ends_the_stream_with_an_error(backend, doomed):
    cfg = mixture("mix", backend.url, ["ok"], "die", urls={"die": doomed.url})
    with ThreadServer([cfg]) as server:
        got = []
        with pytest.raises(openai.APIError) as e:
            for chunk in client(server.url).chat.completions.create(
                model="mix", messages=Q, stream=True
            ):
                got.append(chunk.choices[0].delta.content)
        assert got and all(got)  # the words sent before the death came through
        assert "agg (layer 2)" in e.value.message  # names the agent that failed
        assert doomed.proc.wait(10) is not None  # it died (reaping it can lag the socket close)
        assert server.health()["running"] == 0


def test_an_aggregator_whose_backend_dies_gives_a_non_streaming_502(backend, doomed):
    cfg = mixture("mix", backend.url, ["ok"], "die", urls={"die": doomed.url})
    with ThreadServer([cfg]) as server:
        r = httpx.post(
            f"{server.url}/chat/completions", json={"model": "mix", "messages": Q}, timeout=60
        )
        assert r.status_code == 502
        assert "agg (layer 2)" in r.json()["error"]["message"]
        assert doomed.proc.wait(10) is not None  # it died (reaping it can lag the socket close)
        # the server itself is unharmed
        ok = httpx.get(f"{server.base}/health", timeout=10).json()
        assert ok["status"] == "ok" and ok["running"] == 0


def test_every_backend_dead_gives_a_clean_502_naming_each_agent(backend, doomed):
    cfg = mixture("mix", backend.url, ["die"], "ok", urls={"die": doomed.url, "ok": doomed.url})
    with ThreadServer([cfg]) as server:
        r = httpx.post(
            f"{server.url}/chat/completions",
            json={"model": "mix", "messages": Q, "stream": True},
            timeout=60,
        )
        assert r.status_code == 502 and "p-die" in r.json()["error"]["message"]
