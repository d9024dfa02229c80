"""A fake OpenAI-compatible chat backend: real HTTP on 127.0.0.1, set latency, chosen faults.

For testing a mixture, a client of `mixkit serve`, or mixkit itself with no model and no network.
Run it as a process (`python -m mixkit.testing.fake_openai --port 9001 --ttft 0.02`), or:

    with FakeBackend(ttft=0.01) as backend:        # its own process, on a free port
        agent = {"provider": "openai", "base_url": backend.url, "model": "fail500:x"}
        ...
        backend.bodies("fail500:x")                # the requests that model received

The request's `model` picks the behaviour, as `KIND` or `KIND:ARG` (ARG keeps counters apart):

    ok:TEXT       stream TEXT word by word, then stop
    ok            (and any other name) --tokens words that depend on the prompt, --gap apart
    seq:A|||B     the model's 1st request gets text A, its 2nd B, and so on (the last repeats)
    gated         one word, then wait for POST /release (at most 30 s), then the rest
    slow          a word every 0.1 s for 60 s (until the client goes away)
    hang          headers, then nothing for 60 s (until the client goes away)
    cut           two words, then the connection is dropped mid-stream
    die           two words, then the whole process exits
    fail          HTTP 500 (also `fail500`)
    flaky500      HTTP 500 for the model's first two requests, then ok
    ratelimit     HTTP 429 with Retry-After: 1 for the model's first request, then ok
    ratelimited   HTTP 429 with Retry-After: 1, always
    badjson       an SSE event whose data is not JSON
    empty         a well-formed stream with no content
    authecho      HTTP 401 whose message echoes the Authorization header back (a leak to catch)
    solve:SKILL   a specialist (`solve`): right on its kind of question, a fixed wrong answer
                  otherwise (add: sums the integers of a question with '+'; reverse: reverses
                  the quoted word), so that a gate has something to learn
    jsonbad, jsonnever, callbad: structured output gone wrong (see fake_structured.py, which
                  also makes every model honour response_format, tools and tool results)

The first answer word arrives after --ttft seconds. GET /stats counts requests started,
completed and abandoned by their client (`disconnected`) and the last sampling parameters per
model; GET /requests lists the chat requests received (time, body, headers); POST /reset zeroes
all of it and closes the gate; POST /close closes the gate.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import time
import urllib.request
from collections import Counter, deque
from typing import Any

import uvicorn

from mixkit.testing import fake_structured
from mixkit.testing.processes import free_port, http_ready, start_process, stop_process

WORDS = "the a mixture of agents answers layer by layer while each proposer writes its own".split()
Scope = dict[str, Any]
Message = dict[str, Any]


def solve(skill: str, prompt: str) -> str:
    """A specialist's answer to `prompt` (the `solve:SKILL` behaviour)."""
    if skill == "add" and "+" in prompt:
        return f"Adding up. Answer: {sum(int(n) for n in re.findall(r'-?[0-9]+', prompt))}"
    quoted = re.findall(r"'([a-z]+)'", prompt)
    if skill == "reverse" and quoted:
        return f"Reading it backwards. Answer: {quoted[0][::-1]}"
    return f"Not my kind of question. Answer: {skill}-does-not-know"


def words_for(prompt: str, model: str, n: int) -> list[str]:
    """Deterministic, prompt-dependent words (a stand-in for a model's answer)."""
    digest = hashlib.sha256(f"{model}\n{prompt}".encode()).digest()
    return [WORDS[digest[i % len(digest)] % len(WORDS)] for i in range(n)]


class FakeOpenAI:
    """The ASGI app. State lives on the instance; one event loop, so no locks."""

    def __init__(self, ttft: float = 0.02, gap: float = 0.002, tokens: int = 8):
        self.ttft, self.gap, self.tokens = ttft, gap, tokens
        self.gate = asyncio.Event()
        self.requests: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.counts: Counter[str] = Counter()
        self.stats: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        self.gate.clear()
        self.requests.clear()
        self.counts.clear()
        self.stats = {"started": 0, "completed": 0, "disconnected": 0, "active": 0, "sampling": {}}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method, body = scope["path"], scope["method"], b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path.endswith("/chat/completions") and method == "POST":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            return await self._chat(json.loads(body), headers, receive, send)
        await self._control(method, path, send)

    async def _control(self, method: str, path: str, send: Any) -> None:
        """The test-control routes: stats, recorded requests, the gate, reset."""
        if (method, path) == ("GET", "/stats"):
            return await _json(send, 200, self.stats)
        if (method, path) == ("GET", "/requests"):
            return await _json(send, 200, list(self.requests))
        if (method, path) == ("GET", "/v1/models"):
            return await _json(send, 200, {"object": "list", "data": []})
        if method == "POST" and path in ("/release", "/close", "/reset"):
            if path == "/release":
                self.gate.set()
            elif path == "/close":
                self.gate.clear()
            else:
                self.reset()
            return await _json(send, 200, {"ok": True})
        await _json(send, 404, {"error": {"message": f"no route {method} {path}"}})

    async def _chat(self, req: Message, headers: dict[str, str], receive: Any, send: Any) -> None:
        model = str(req.get("model", "ok"))
        self.requests.append({"time": time.monotonic(), "body": req, "headers": headers})
        self.counts[model] += 1
        refusal = self._refusal(model.partition(":")[0], self.counts[model], headers)
        if refusal is not None:
            status, message, extra = refusal
            return await _json(send, status, {"error": {"message": message}}, extra)
        self.stats["started"] += 1
        self.stats["active"] += 1
        # the last sampling parameters each model was asked for (tests check pass-through)
        self.stats["sampling"][model] = {
            k: req.get(k) for k in ("temperature", "top_p", "max_tokens")
        }
        work = asyncio.ensure_future(self._answer(req, model, send))
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.stats["active"] -= 1
            if gone.done() and not work.done():
                self.stats["disconnected"] += 1
            work.cancel()
            gone.cancel()
        if work.done() and not work.cancelled():
            error = work.exception()
            if error is not None:
                raise error  # `cut`: uvicorn drops the connection mid-stream
            self.stats["completed"] += 1

    def _refusal(
        self, kind: str, count: int, headers: dict[str, str]
    ) -> tuple[int, str, dict[str, str]] | None:
        """(status, message, headers) for the behaviours that answer with an HTTP error."""
        if kind in ("fail", "fail500") or (kind == "flaky500" and count <= 2):
            return 500, "fake backend failure", {}
        if kind == "ratelimited" or (kind == "ratelimit" and count == 1):
            return 429, "slow down", {"retry-after": "1"}
        if kind == "authecho":
            return 401, f"bad key {headers.get('authorization')}", {}
        return None

    def _words(self, req: Message, model: str) -> list[str]:
        kind, _, arg = model.partition(":")
        if kind == "ok" and arg:
            words = arg.split(" ")
            return [w + " " for w in words[:-1]] + words[-1:]
        fixed = {
            "flaky500": f"recovered after {self.counts[model] - 1} failures",
            "ratelimit": "served after waiting",
            "cut": "partial answer",
            "die": "partial answer",
            "empty": "",
        }.get(kind)
        if kind == "solve":
            fixed = solve(arg, str(req.get("messages", [{}])[-1].get("content")))
        if kind == "seq":  # scripted replies, e.g. a failing program, then its fix
            texts = arg.split("|||")
            fixed = texts[min(self.counts[model], len(texts)) - 1]
        if fixed is not None:
            words = fixed.split(" ") if fixed else []
            return [w + " " for w in words[:-1]] + words[-1:]
        prompt = "\n".join(str(m.get("content")) for m in req.get("messages", []))
        limit = min(self.tokens, int(req.get("max_tokens") or 10**6))
        return [w + " " for w in words_for(prompt, model, limit)]

    async def _answer(self, req: Message, model: str, send: Any) -> None:
        kind = model.partition(":")[0]
        words = self._words(req, model)
        # response_format / tools / a tool result (fake_structured.py) replace the usual words
        text, calls = fake_structured.reply(req, kind, self.counts[model])
        if text is not None or calls:
            parts = (text or "").split(" ") if text else []
            words = [w + " " for w in parts[:-1]] + parts[-1:]
        prompt = "\n".join(str(m.get("content")) for m in req.get("messages", []))
        n_in = len(prompt.split())
        usage = {
            "prompt_tokens": n_in,
            "completion_tokens": len(words),
            "total_tokens": n_in + len(words),
        }
        if not req.get("stream"):
            await asyncio.sleep(self.ttft + self.gap * len(words))
            return await _json(send, 200, _completion(model, "".join(words), usage))
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(self.ttft)
        if kind == "hang":
            await asyncio.sleep(60)
        if kind == "badjson":
            await send({"type": "http.response.body", "body": b"data: {not json\n\n"})
            return
        stream = words if kind != "slow" else iter(lambda: "slow ", None)
        for i, word in enumerate(stream):
            if i > 0:
                await asyncio.sleep(self.gap if kind != "slow" else 0.1)
            await _event(send, _chunk(model, {"content": word}))
            if kind == "gated" and i == 0:
                await asyncio.wait_for(self.gate.wait(), 30)
            if kind in ("die", "cut") and i == 1:
                if kind == "die":
                    os._exit(3)  # the whole backend dies with this request half-sent
                raise ConnectionAbortedError("fake backend cut the stream")
        for delta in fake_structured.call_chunks(calls or []):
            await _event(send, _chunk(model, delta))
        await _event(send, _chunk(model, {}, "tool_calls" if calls else "stop"))
        if (req.get("stream_options") or {}).get("include_usage"):
            await _event(send, {**_chunk(model, {}), "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _json(send: Any, status: int, obj: object, extra: dict[str, str] | None = None) -> None:
    headers = [(b"content-type", b"application/json")]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(obj).encode()})


async def _event(send: Any, obj: dict[str, Any]) -> None:
    data = f"data: {json.dumps(obj)}\n\n".encode()
    await send({"type": "http.response.body", "body": data, "more_body": True})


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"object": "chat.completion.chunk", **_head(model), "choices": [choice]}


def _completion(model: str, text: str, usage: dict[str, int]) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
    }
    return {"object": "chat.completion", **_head(model), "choices": [choice], "usage": usage}


def _head(model: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "created": int(time.time()), "model": model}


def mixture_toml(url: str, deadline_s: float = 60) -> str:
    """A mixture config over a fake backend at `url`: two proposers, then an aggregator."""
    agent = f'provider = "openai"\nbase_url = "{url}"\nmodel = "ok"'
    return (
        f'aggregator = "agg"\ndeadline_s = {deadline_s}\n'
        f"[agents.p]\n{agent}\n[agents.agg]\n{agent}\n"
        '[[layers]]\nagents = ["p", "p"]\n'
    )


class FakeBackend:
    """A fake backend in its own process on a free port: `with FakeBackend() as b: b.url`."""

    def __init__(self, ttft: float = 0.02, gap: float = 0.002, tokens: int = 8):
        self.port = free_port()
        self.args = ["--ttft", str(ttft), "--gap", str(gap), "--tokens", str(tokens)]
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _call(self, path: str, method: str = "GET") -> Any:
        data = b"" if method == "POST" else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return dict(self._call("/stats"))

    def requests(self) -> list[dict[str, Any]]:
        """Every chat request received: {"time": monotonic s, "body": ..., "headers": ...}."""
        return list(self._call("/requests"))

    def bodies(self, model: str) -> list[dict[str, Any]]:
        """The bodies of the chat requests for `model`, in order."""
        return [r["body"] for r in self.requests() if r["body"].get("model") == model]

    def release(self) -> None:
        self._call("/release", "POST")

    def close_gate(self) -> None:
        self._call("/close", "POST")

    def reset(self) -> None:
        self._call("/reset", "POST")

    def start(self) -> FakeBackend:
        cmd = [sys.executable, "-m", "mixkit.testing.fake_openai", "--port", str(self.port)]
        self.proc = start_process(
            [*cmd, *self.args],
            http_ready(f"http://127.0.0.1:{self.port}/stats"),
            what="fake backend",
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> FakeBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    p = argparse.ArgumentParser(description="fake OpenAI-compatible chat backend")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ttft", type=float, default=0.02, help="seconds before the first word")
    p.add_argument("--gap", type=float, default=0.002, help="seconds between words")
    p.add_argument("--tokens", type=int, default=8, help="words per answer")
    a = p.parse_args()
    app = FakeOpenAI(a.ttft, a.gap, a.tokens)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="critical", backlog=4096)


if __name__ == "__main__":
    main()
