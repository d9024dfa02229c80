"""A fake OpenAI-compatible chat backend: real HTTP on 127.0.0.1, set latency, chosen faults.

For tests and benchmarks of `mixkit serve` (no network, no model). Run it as a process:

    python -m mixkit.serve.fake_backend --port 9001 --ttft 0.02 --gap 0.002 --tokens 8

The request's `model` picks the behaviour:

    ok       after --ttft, --tokens words --gap apart (the words depend on the prompt), then stop
    gated    one word, then wait for POST /release (at most 30 s), then the rest
    slow     a word every 0.1 s for 60 s (until the client goes away)
    hang     headers, then nothing (until the client goes away)
    die      two words, then the whole process exits: a backend dying mid-request
    cut      two words, then the connection is dropped without finishing the stream
    fail     HTTP 500

GET /stats counts requests started, completed and abandoned by their client (`disconnected`);
POST /reset zeroes them and closes the gate.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

WORDS = "the a mixture of agents answers layer by layer while each proposer writes its own".split()


def words_for(prompt: str, model: str, n: int) -> list[str]:
    """Deterministic, prompt-dependent words (a stand-in for a model's answer)."""
    digest = hashlib.sha256(f"{model}\n{prompt}".encode()).digest()
    return [WORDS[digest[i % len(digest)] % len(WORDS)] for i in range(n)]


class FakeBackend:
    """The ASGI app. Counters live on the instance; one event loop, so no locks."""

    def __init__(self, ttft: float, gap: float, tokens: int):
        self.ttft, self.gap, self.tokens = ttft, gap, tokens
        self.stats = {"started": 0, "completed": 0, "disconnected": 0, "active": 0, "sampling": {}}
        self.gate = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path == "/stats":
            return await self._json(send, 200, self.stats)
        if path == "/release" and method == "POST":
            self.gate.set()
            return await self._json(send, 200, {"released": True})
        if path == "/reset" and method == "POST":
            self.gate.clear()
            self.stats.update(started=0, completed=0, disconnected=0, active=0, sampling={})
            return await self._json(send, 200, {"reset": True})
        if path.endswith("/chat/completions") and method == "POST":
            return await self._chat(json.loads(body), receive, send)
        return await self._json(send, 404, {"error": {"message": f"no route {path}"}})

    async def _json(self, send, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _chat(self, req: dict, receive, send) -> None:
        model = req.get("model", "ok")
        if model == "fail":
            return await self._json(send, 500, {"error": {"message": "fake backend failure"}})
        self.stats["started"] += 1
        self.stats["active"] += 1
        # the last sampling parameters each behaviour was asked for (tests check pass-through)
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
        if work.done() and not work.cancelled() and work.exception() is None:
            self.stats["completed"] += 1
        elif work.done() and not work.cancelled():
            raise work.exception()  # `cut`: uvicorn drops the connection mid-stream

    async def _answer(self, req: dict, model: str, send) -> None:
        prompt = "\n".join(str(m.get("content")) for m in req.get("messages", []))
        words = words_for(prompt, model, min(self.tokens, int(req.get("max_tokens") or 10**6)))
        usage = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(words),
            "total_tokens": len(prompt.split()) + len(words),
        }
        if not req.get("stream"):
            await asyncio.sleep(self.ttft + self.gap * len(words))
            return await self._json(send, 200, _completion(model, " ".join(words), usage))
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(self.ttft)
        if model == "hang":
            await asyncio.sleep(60)
        for i, word in enumerate(words if model != "slow" else iter(lambda: "slow", None)):
            if i > 0:
                await asyncio.sleep(self.gap if model != "slow" else 0.1)
            await _event(send, _chunk(model, {"content": word + " "}))
            if model == "gated" and i == 0:
                await asyncio.wait_for(self.gate.wait(), 30)
            if model in ("die", "cut") and i == 1:
                if model == "die":
                    os._exit(3)  # the whole backend dies with this request half-sent
                raise ConnectionAbortedError("fake backend cut the stream")
        await _event(send, _chunk(model, {}, "stop"))
        if (req.get("stream_options") or {}).get("include_usage"):
            await _event(send, {**_chunk(model, {}), "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _event(send, obj: dict) -> None:
    data = f"data: {json.dumps(obj)}\n\n".encode()
    await send({"type": "http.response.body", "body": data, "more_body": True})


def _chunk(model: str, delta: dict, finish: str | None = None) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _completion(model: str, text: str, usage: dict) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }


def mixture_toml(url: str, deadline_s: float = 60) -> str:
    """A mixture config over a fake backend at `url`: two proposers, then an aggregator."""
    return f"""
aggregator = "agg"
deadline_s = {deadline_s}
[agents.p]
provider = "openai"
base_url = "{url}"
model = "ok"
[agents.agg]
provider = "openai"
base_url = "{url}"
model = "ok"
[[layers]]
agents = ["p", "p"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BackendProcess:
    """A fake backend in its own process on a free port: `with BackendProcess() as b: b.url`."""

    def __init__(self, ttft: float = 0.02, gap: float = 0.002, tokens: int = 8):
        self.port = free_port()
        self.args = ["--ttft", str(ttft), "--gap", str(gap), "--tokens", str(tokens)]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _call(self, path: str, method: str = "GET", timeout: float = 5.0) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self._call("/stats")

    def release(self) -> None:
        self._call("/release", "POST")

    def reset(self) -> None:
        self._call("/reset", "POST")

    def start(self, timeout_s: float = 60.0) -> BackendProcess:
        cmd = [
            sys.executable,
            "-m",
            "mixkit.serve.fake_backend",
            "--port",
            str(self.port),
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake backend exited with {self.proc.returncode}")
            try:
                self.stats()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("fake backend did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> BackendProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description="fake OpenAI-compatible chat backend")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ttft", type=float, default=0.02, help="seconds before the first word")
    p.add_argument("--gap", type=float, default=0.002, help="seconds between words")
    p.add_argument("--tokens", type=int, default=8, help="words per answer")
    a = p.parse_args()
    app = FakeBackend(a.ttft, a.gap, a.tokens)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="critical", backlog=4096)


if __name__ == "__main__":
    main()
