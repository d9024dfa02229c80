"""Graceful shutdown of `mixkit serve` (a real process): SIGTERM lets in-flight requests finish
within the grace period; past it, they are cut and their agents' calls cancelled."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.serve.helpers import ServerProcess, wait_for

Q = [{"role": "user", "content": "hi"}]


def write_config(path, url: str, aggregator: str) -> None:
    path.write_text(
        f"""
aggregator = "agg"
deadline_s = 60
retries = 0
[agents.agg]
provider = "openai"
base_url = "{url}"
model = "{aggregator}"
"""
    )


def refused(base: str) -> bool:
    try:
        httpx.get(f"{base}/health", timeout=2)
        return False
    except httpx.TransportError:
        return True


def stream_in_thread(base: str, model: str) -> tuple[threading.Thread, dict]:
    """Read one streaming request in a thread; `out` gets its lines, or the error that ended it."""
    out: dict = {"lines": [], "first": threading.Event()}

    def read() -> None:
        body = {"model": model, "messages": Q, "stream": True}
        try:
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    out["lines"].append(line)
                    out["first"].set()
        except httpx.HTTPError as e:
            out["error"] = e
        out["first"].set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, out


def test_sigterm_lets_an_inflight_stream_finish(fresh_backend, tmp_path):
    cfg = tmp_path / "gated.toml"
    write_config(cfg, fresh_backend.url, "gated")
    with ServerProcess(tmp_path, [cfg], "--grace", "20") as server:
        thread, out = stream_in_thread(server.base, "gated")
        assert out["first"].wait(30) and out["lines"], out
        server.terminate()
        wait_for(lambda: refused(server.base), what="the server to stop accepting connections")
        assert server.proc.poll() is None  # still running: the stream is in flight
        fresh_backend.release()
        thread.join(30)
        assert not thread.is_alive() and "error" not in out
        assert "data: [DONE]" in out["lines"]  # finished normally, during the shutdown
        server.proc.wait(30)
    assert "Traceback" not in server.stderr.read_text()


def test_past_the_grace_period_streams_are_cut_and_their_calls_cancelled(fresh_backend, tmp_path):
    cfg = tmp_path / "slow.toml"
    write_config(cfg, fresh_backend.url, "slow")
    with ServerProcess(tmp_path, [cfg], "--grace", "1") as server:
        thread, out = stream_in_thread(server.base, "slow")
        assert out["first"].wait(30) and out["lines"]
        server.terminate()
        server.proc.wait(30)  # the slow answer would take 60 s: the grace period ends it
        thread.join(30)
        assert not thread.is_alive()  # the client is not left hanging
        assert "data: [DONE]" not in out["lines"]
    wait_for(
        lambda: fresh_backend.stats()["disconnected"] == 1,
        what="the backend to see the cut-off aggregator call dropped",
    )


@pytest.mark.parametrize("signal_name", ["SIGINT"])
def test_ctrl_c_stops_an_idle_server_quietly(tmp_path, signal_name, backend):
    import signal

    cfg = tmp_path / "idle.toml"
    write_config(cfg, backend.url, "ok")
    with ServerProcess(tmp_path, [cfg]) as server:
        server.proc.send_signal(getattr(signal, signal_name))
        server.proc.wait(30)
    assert "Traceback" not in server.stderr.read_text()
