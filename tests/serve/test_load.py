"""Load: 200 concurrent streaming requests to `mixkit serve` (a real process) over fast fake agents.

Zero errors and a generous bound on the whole thing; the latency and memory figures are measured
by bench/serve_load.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3

import httpx

from mixkit.testing import mixture_toml
from tests.serve.helpers import ServerProcess, wait_for

CONCURRENT = 200


async def one_stream(client: httpx.AsyncClient, i: int) -> dict:
    body = {
        "model": "load",
        "messages": [{"role": "user", "content": f"question {i}"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    return {
        "status": r.status_code,
        "done": events[-1:] == ["[DONE]"],
        "errors": [c for c in chunks if "error" in c],
        "text": text,
        "usage": chunks[-1].get("usage") if chunks else None,
        "run_id": r.headers.get("x-mixkit-run-id"),
    }


async def run_load(base: str) -> list[dict]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        tasks = [one_stream(client, i) for i in range(CONCURRENT)]
        # never hangs: a bound for a stuck server, well above a loaded 2-core machine (300 s was hit
        # at load ~10) and below pytest-timeout's 600 s
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=540)


def test_200_concurrent_streams_all_succeed(backend, tmp_path):
    cfg = tmp_path / "load.toml"
    cfg.write_text(mixture_toml(backend.url))
    with ServerProcess(tmp_path, [cfg], "--max-concurrent", str(CONCURRENT)) as server:
        results = asyncio.run(run_load(server.base))
        health = httpx.get(f"{server.base}/health", timeout=10).json()
        # every run is in the log (written by the server's log thread, moments after its answer)
        outcomes = wait_for(lambda: (o := run_outcomes(tmp_path)).get("ok") == CONCURRENT and o)
    bad = [r for r in results if r["status"] != 200 or not r["done"] or r["errors"]]
    assert not bad, bad[:3]
    assert all(r["text"].strip() and r["usage"]["completion_tokens"] > 0 for r in results)
    assert len({r["run_id"] for r in results}) == CONCURRENT
    assert health["running"] == 0
    assert outcomes == {"ok": CONCURRENT}


def run_outcomes(home) -> dict:
    db = sqlite3.connect(home / "logs.db")
    try:
        return dict(db.execute("SELECT outcome, count(*) FROM runs GROUP BY outcome").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
