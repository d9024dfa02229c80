"""Real HTTP servers on 127.0.0.1 for the MoA tests.

`ScriptedServer` speaks the OpenAI chat-completions streaming protocol (SSE over chunked HTTP/1.1).
The request's `model` picks a behaviour, `kind:arg`:

    ok:TEXT          stream TEXT in a few chunks, then finish_reason=stop and usage
    fail500:KEY      always HTTP 500
    flaky500:KEY     HTTP 500 twice, then ok
    ratelimit:KEY    429 with Retry-After: 1 once, then ok
    ratelimited:KEY  always 429 with Retry-After: 1
    hang:KEY         accept, then send nothing for 60 s
    cut:KEY          send two chunks, then drop the connection mid-stream
    badjson:KEY      an SSE event whose data is not JSON
    empty:KEY        a well-formed stream with no content
    authecho:KEY     HTTP 401 whose body echoes the Authorization header back
    gated:KEY        send one chunk, wait for `server.release` (a threading.Event), send the rest

Every request body is recorded with its arrival time in `server.requests`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, obj: dict | str) -> None:
        payload = obj if isinstance(obj, str) else json.dumps(obj)
        self._chunk(f"data: {payload}\n\n".encode())

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _delta(self, model: str, content: str | None = None, finish: str | None = None) -> dict:
        delta = {"content": content} if content is not None else {}
        return {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _plain(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _stream_text(self, model: str, text: str) -> None:
        self._start_stream()
        words = text.split(" ")
        for i, word in enumerate(words):
            self._event(self._delta(model, word + (" " if i < len(words) - 1 else "")))
        self._event(self._delta(model, finish="stop"))
        self._event(
            {
                **self._delta(model),
                "choices": [],
                "usage": {
                    "prompt_tokens": 11,
                    "completion_tokens": len(words),
                    "total_tokens": 11 + len(words),
                },
            }
        )
        self._event("[DONE]")
        self._chunk(b"")

    def do_GET(self) -> None:
        self._plain(200, {"object": "list", "data": []})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        srv = self.server
        with srv.lock:
            srv.requests.append(
                {
                    "time": time.monotonic(),
                    "body": body,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                }
            )
            srv.counts[body["model"]] += 1
            count = srv.counts[body["model"]]
        model = body["model"]
        kind, _, arg = model.partition(":")
        if kind == "ok":
            self._stream_text(model, arg)
        elif kind == "fail500":
            self._plain(500, {"error": {"message": "boom"}})
        elif kind == "flaky500":
            if count <= 2:
                self._plain(500, {"error": {"message": "flaky"}})
            else:
                self._stream_text(model, f"recovered after {count - 1} failures")
        elif kind == "ratelimit":
            if count == 1:
                self._plain(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
            else:
                self._stream_text(model, "served after waiting")
        elif kind == "ratelimited":
            self._plain(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
        elif kind == "hang":
            srv.stop.wait(60)
        elif kind == "cut":
            self._start_stream()
            self._event(self._delta(model, "partial "))
            self._event(self._delta(model, "answer "))
            self.connection.shutdown(socket.SHUT_RDWR)  # mid-stream, no terminating chunk
            self.close_connection = True
        elif kind == "badjson":
            self._start_stream()
            self._event("{this is not json")
            self._chunk(b"")
        elif kind == "empty":
            self._start_stream()
            self._event(self._delta(model, finish="stop"))
            self._event("[DONE]")
            self._chunk(b"")
        elif kind == "authecho":
            self._plain(401, {"error": {"message": f"bad key {self.headers.get('Authorization')}"}})
        elif kind == "gated":
            self._start_stream()
            self._event(self._delta(model, "first "))
            srv.release.wait(30)
            self._event(self._delta(model, "second"))
            self._event(self._delta(model, finish="stop"))
            self._event("[DONE]")
            self._chunk(b"")
        else:
            self._plain(404, {"error": {"message": f"unknown test model {model}"}})


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True  # a hanging handler must not block shutdown

    def __init__(self):
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.requests: list[dict] = []
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def bodies(self, model: str) -> list[dict]:
        return [r["body"] for r in self.requests if r["body"]["model"] == model]

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.release.set()
        self.shutdown()
        self.server_close()


def start_llama_server(model_path: str, timeout_s: float = 120.0):
    """Start a real `python -m llama_cpp.server` on a free port; return (process, base_url)."""
    import os
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        model_path,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
        "--n_ctx",
        "2048",
    ]
    import tempfile

    log = (
        tempfile.TemporaryFile()
    )  # not a pipe: the server's verbose load log would fill it and block
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(
                f"llama_cpp.server exited: {log.read().decode(errors='replace')[-2000:]}"
            )
        try:
            with urllib.request.urlopen(url + "/models", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start in time")
