"""Bad input, failing backends and limits: every refusal is OpenAI-shaped JSON with the right status."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from mixkit.serve import ServeSettings
from tests.serve.helpers import ThreadServer, logged_run, mixture

Q = [{"role": "user", "content": "hi"}]
SHAPE = {"message", "type", "param", "code"}


def post(url: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(f"{url}/chat/completions", content=content, headers=headers, timeout=60, **kw)


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == SHAPE, body
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture(scope="module")
def small(backend):
    """Tight limits, so the limit tests are cheap."""
    settings = ServeSettings(max_body_bytes=4096, max_messages=4, max_tokens=64)
    with ThreadServer([mixture("mix", backend.url, ["ok"], "ok")], settings) as s:
        yield s


BAD = [
    # (body, status, param)
    (b"{not json", 400, None),
    (b"\xff\xfe\x00", 400, None),
    (b"[1, 2]", 400, None),
    (b'"a string"', 400, None),
    ({"messages": Q}, 400, "model"),
    ({"model": "mix"}, 400, "messages"),
    ({"model": "mix", "messages": []}, 400, "messages"),
    ({"model": 7, "messages": Q}, 400, "model"),
    ({"model": "mix", "messages": "hi"}, 400, "messages"),
    (
        {"model": "mix", "messages": [{"role": "tool", "content": "x", "tool_call_id": "c1"}]},
        400,
        "messages[0].tool_call_id",
    ),  # a tool result answering no earlier call (tests/serve/test_tools_errors.py: more)
    ({"model": "mix", "messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ({"model": "mix", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    (
        {"model": "mix", "messages": [{"role": "assistant", "content": "x"}]},
        400,
        "messages[0].role",
    ),
    ({"model": "mix", "messages": Q, "stream": "yes"}, 400, "stream"),
    ({"model": "mix", "messages": Q, "max_tokens": "12"}, 400, "max_tokens"),
    ({"model": "mix", "messages": Q, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "mix", "messages": Q, "max_tokens": 65}, 400, "max_tokens"),
    ({"model": "mix", "messages": Q, "max_completion_tokens": 10**9}, 400, "max_completion_tokens"),
    ({"model": "mix", "messages": Q, "temperature": 2.5}, 400, "temperature"),
    ({"model": "mix", "messages": Q, "top_p": -1}, 400, "top_p"),
    ({"model": "mix", "messages": Q, "n": 2}, 400, "n"),
    ({"model": "mix", "messages": Q, "tools": [{"type": "function"}]}, 400, "tools[0].function"),
    ({"model": "mix", "messages": Q, "logprobs": True}, 400, "logprobs"),
    ({"model": "mix", "messages": Q * 5}, 400, "messages"),
    (
        {"model": "mix", "messages": Q, "response_format": {"type": "xml"}},
        400,
        "response_format.type",
    ),
    ({"model": "no-such-mixture", "messages": Q}, 404, "model"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD)
def test_bad_requests_get_openai_shaped_4xx(small, body, status, param):
    r = post(small.url, body)
    assert r.status_code == status
    assert error_of(r)["param"] == param


def test_oversized_bodies_get_413_declared_or_chunked(small):
    big = {"model": "mix", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert post(small.url, big).status_code == 413

    def chunked():  # no Content-Length: the server must count as it reads
        for _ in range(100):
            yield b" " * 1000

    r = httpx.post(f"{small.url}/chat/completions", content=chunked(), timeout=60)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
    assert small.health()["running"] == 0


def test_unknown_paths_and_methods_are_openai_shaped(small):
    r = httpx.get(f"{small.url}/nothing-here")
    assert r.status_code == 404 and error_of(r)
    r = httpx.get(f"{small.url}/chat/completions")
    assert r.status_code == 405 and error_of(r)


def test_openai_client_sees_typed_errors(small):
    c = openai.OpenAI(base_url=small.url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="mix", messages=Q, max_tokens=100)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=Q)


@pytest.mark.parametrize("stream", [False, True])
def test_failing_proposers_give_502_naming_them(server, home, stream):
    r = post(server.url, {"model": "fail-mix", "messages": Q, "stream": stream})
    assert r.status_code == 502
    err = error_of(r)
    assert "p-fail" in err["message"] and "HTTP 500" in err["message"]
    run, calls = logged_run(home, r.headers["x-mixkit-run-id"])
    assert run["outcome"] == "error" and all(c["outcome"] == "error" for c in calls)


def test_failing_aggregator_gives_502_naming_it(server):
    r = post(server.url, {"model": "agg-fail-mix", "messages": Q})
    assert r.status_code == 502 and "agg (layer 2)" in error_of(r)["message"]


def test_agents_past_their_deadline_give_504(server):
    r = post(server.url, {"model": "timeout-mix", "messages": Q})
    assert r.status_code == 504
    assert "p-hang" in error_of(r)["message"] and error_of(r)["code"] == "agents_timed_out"


def test_a_stream_that_breaks_after_its_first_token_ends_with_an_error_event(server):
    c = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=60)
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in c.chat.completions.create(model="cut-mix", messages=Q, stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got and got[0]  # the first words came through before the cut
    assert "agg" in e.value.message
    assert server.health()["running"] == 0


def test_past_the_concurrency_limit_the_server_answers_429_at_once(backend):
    """One run may be in flight; a second is refused while the first still waits on its backend."""
    backend.reset()
    configs = [
        mixture("gated-mix", backend.url, [], "gated"),
        mixture("mix", backend.url, [], "ok"),
    ]

    async def go(url: str, health) -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            body = {"model": "gated-mix", "messages": Q, "stream": True}
            async with c.stream("POST", f"{url}/chat/completions", json=body) as first:
                assert first.status_code == 200
                lines = first.aiter_lines()
                assert (await lines.__anext__()).startswith("data: ")  # first word is out
                refused = await c.post(
                    f"{url}/chat/completions", json={"model": "mix", "messages": Q}
                )
                assert refused.status_code == 429 and refused.headers["retry-after"]
                assert error_of(refused)["type"] == "rate_limit_error"
                assert backend.stats()["active"] == 1  # the first run is still in flight
                backend.release()
                rest = [line async for line in lines]
                assert "data: [DONE]" in rest
            again = await c.post(f"{url}/chat/completions", json={"model": "mix", "messages": Q})
            assert again.status_code == 200  # the slot was given back

    with ThreadServer(configs, ServeSettings(max_concurrent=1)) as s:
        asyncio.run(go(s.url, s.health))
        assert s.health()["running"] == 0


def test_a_client_at_the_limit_never_sees_its_own_finished_run_counted(backend):
    """Back-to-back streams on one connection with max_concurrent=1: the slot is free in time."""
    with ThreadServer(
        [mixture("mix", backend.url, [], "ok")], ServeSettings(max_concurrent=1)
    ) as s:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            statuses = []
            for _ in range(30):
                body = {"model": "mix", "messages": Q, "stream": True}
                with c.stream("POST", "/chat/completions", json=body) as r:
                    r.read()
                    statuses.append(r.status_code)
    assert statuses == [200] * 30


def _read_response(conn) -> str:
    """Headers and the whole Content-Length body; they may arrive in separate segments."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data.decode()
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        None,
    )
    while length is not None and len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_body_that_stalls_gets_408_and_frees_the_connection(backend):
    """A client that declares a body and never finishes it (slow-loris) is cut off."""
    import socket

    settings = ServeSettings(body_timeout_s=0.5)
    with ThreadServer([mixture("mix", backend.url, [], "ok")], settings) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as conn:
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model"'
            )
            reply = _read_response(conn)  # blocks until the server answers (timeout 30 s)
        status, _, rest = reply.partition("\r\n")
        assert " 408 " in status
        assert json.loads(rest.split("\r\n\r\n", 1)[1])["error"]["code"] == "body_timeout"
        assert s.health()["running"] == 0
