"""A program agent behind `mixkit serve` (a real server process): its program streams first as
`reasoning_content` deltas, then the answer; a hostile program (an endless loop, a fork bomb)
fails its own call cleanly while the server keeps answering, and leaves no process behind."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.serve.helpers import ServerProcess, logged_run, wait_for

FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
LOOP = "while True:\n    pass"


def program_toml(path: Path, url: str, program: str, wall_s: float = 10.0) -> Path:
    path.write_text(
        f'aggregator = "coder"\ndeadline_s = 20\nretries = 0\n[agents.coder]\nprovider = "openai"\n'
        f'base_url = "{url}"\nmodel = {json.dumps("ok:" + program)}\nkind = "program"\nretries = 0\n'
        f"[agents.coder.limits]\nwall_s = {wall_s}\nprocs = 16\n"
    )
    return path


@pytest.fixture(scope="module")
def server(backend, home, tmp_path_factory):
    folder = tmp_path_factory.mktemp("program-configs")
    configs = [
        program_toml(folder / "prog.toml", backend.url, "print(-14 / 2)"),
        program_toml(folder / "loop.toml", backend.url, LOOP, wall_s=2),
        program_toml(folder / "forkbomb.toml", backend.url, FORK_BOMB, wall_s=2),
    ]
    with ServerProcess(home, configs) as s:
        yield s


def sse(response: httpx.Response) -> list[dict]:
    """The `data:` events of a stream, parsed (`[DONE]` left out)."""
    lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    return [json.loads(data) for data in lines if data != "[DONE]"]


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_the_program_streams_as_reasoning_content_before_the_answer(server, home):
    body = {"model": "prog", "stream": True, "messages": [{"role": "user", "content": "-14/2?"}]}
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = sse(r)
    deltas = [e["choices"][0]["delta"] for e in events if e.get("choices")]
    kinds = ["reasoning" if d.get("reasoning_content") else "content" for d in deltas if
             d.get("reasoning_content") or d.get("content")]  # fmt: skip
    assert kinds[0] == "reasoning" and kinds == sorted(kinds, key=lambda k: k == "content")
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    assert "print(-14 / 2)" in reasoning
    assert "".join(d.get("content") or "" for d in deltas) == "-7"
    run_id = r.headers["x-mixkit-run-id"]
    run, calls = logged_run(home, run_id)
    assert run["answer"] == "-7"
    assert json.loads(calls[0]["programs_json"])[0]["status"] == "ok"
    # the web app's run view gets the programs parsed, and the prompt the agent was sent
    call = httpx.get(f"{server.base}/api/runs/{run_id}/calls/{calls[0]['id']}", timeout=30).json()
    assert call["call"]["programs"][0]["program"] == "print(-14 / 2)"
    assert "Write a complete Python program" in call["prompt"][-1]["content"]
    whole = httpx.post(
        f"{server.base}/v1/chat/completions", json={**body, "stream": False}, timeout=60
    )
    message = whole.json()["choices"][0]["message"]
    assert message["content"] == "-7" and "print(-14 / 2)" in message["reasoning_content"]


@pytest.mark.parametrize("model, status", [("loop", "timeout"), ("forkbomb", "timeout")])
def test_a_hostile_program_fails_its_call_and_the_server_keeps_answering(server, model, status):
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    url = f"{server.base}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert "reasoning_content" in first  # the program is written: now it runs
        assert httpx.get(f"{server.base}/health", timeout=30).status_code == 200
        other = {"model": "prog", "messages": [{"role": "user", "content": "-14/2?"}]}
        answer = httpx.post(url, json=other, timeout=60).json()
        assert answer["choices"][0]["message"]["content"] == "-7"
        rest = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    error = rest[-1]["error"]["message"]
    assert f"the program failed ({status})" in error and "timed out after 2 s" in error
    assert server.proc is not None
    wait_for(lambda: not children(server.proc.pid), what="the sandbox's processes to be gone")
