"""`mixkit serve` under load: server overhead per request and the server's peak memory.

A real `mixkit serve` process serves one mixture (2 proposers + an aggregator) whose agents are a
fake OpenAI-compatible backend process on 127.0.0.1 with a set latency (mixkit.testing).
N streaming requests are sent C at a time with httpx. For each request:

    end-to-end   client sends the request -> client reads `data: [DONE]`
    server       end-to-end - the engine's wall time for the run (the run's `wall_s`, in the
                 final chunk): HTTP parsing, validation, SSE encoding, uvicorn, the event loop
                 shared with the other requests in flight
    server+engine  end-to-end - the run's critical path (sum over layers of the slowest call)

Peak RSS is the server process's VmHWM after the run.

    python bench/serve_load.py                           # C = 1, 50, 200
    python bench/serve_load.py --concurrency 200 --requests 400 --ttft 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mixkit.testing import FakeBackend, free_port, http_ready, mixture_toml, start_process


async def one(client: httpx.AsyncClient, i: int) -> dict:
    body = {"model": "bench", "messages": [{"role": "user", "content": f"q{i}"}], "stream": True}
    start = time.perf_counter()
    first = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        events = []
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                first = first or time.perf_counter()
                events.append(line[6:])
    end = time.perf_counter()
    ok = r.status_code == 200 and events[-1:] == ["[DONE]"]
    final = next((json.loads(e) for e in reversed(events[:-1]) if '"mixkit"' in e), {}).get(
        "mixkit", {}
    )
    return {
        "ok": ok,
        "e2e": end - start,
        "ttfb": (first or end) - start,
        "wall": final.get("wall_s"),
        "critical": final.get("critical_path_s"),
    }


async def load(base: str, n: int, concurrency: int) -> tuple[list[dict], float]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:

        async def limited(i: int) -> dict:
            async with gate:
                return await one(client, i)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(i) for i in range(n)))
        return results, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000  # ms


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(
    config: Path, home: Path, max_concurrent: int, *extra: str
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        "from mixkit.cli import main; main()",
        "serve",
        "--port",
        str(port),
    ]
    cmd += ["-c", str(config), "--max-concurrent", str(max_concurrent), *extra]
    base = f"http://127.0.0.1:{port}"
    env = {"MIXKIT_HOME": str(home)}
    return start_process(cmd, http_ready(f"{base}/health"), what="mixkit serve", env=env), base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--ttft", type=float, default=0.02, help="fake backend: s to first word")
    parser.add_argument("--gap", type=float, default=0.002, help="fake backend: s between words")
    parser.add_argument("--tokens", type=int, default=8, help="fake backend: words per answer")
    parser.add_argument("--no-log", action="store_true", help="serve with --no-log (no SQLite)")
    args = parser.parse_args()

    print(f"cpu cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    print(
        f"fake agents: ttft {args.ttft * 1000:.0f} ms, {args.tokens} words {args.gap * 1000:.0f} ms apart"
    )
    print(
        "| concurrency | requests | errors | req/s | e2e p50 / p99 ms | TTFB p50 ms "
        "| server p50 / p99 ms | server+engine p50 / p99 ms | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeBackend(args.ttft, args.gap, args.tokens) as b,
    ):
        config = Path(tmp) / "bench.toml"
        config.write_text(mixture_toml(b.url, deadline_s=120))
        for c in args.concurrency:
            extra = ["--no-log"] if args.no_log else []
            proc, base = start_server(config, Path(tmp), max(c, 1), *extra)
            try:
                asyncio.run(load(base, min(10, args.requests), c))  # warm-up (imports, pools)
                results, elapsed = asyncio.run(load(base, args.requests, c))
                rss = peak_rss_mib(proc.pid)
            finally:
                proc.terminate()
                proc.wait(30)
            good = [r for r in results if r["ok"]]
            e2e = [r["e2e"] for r in good]
            server = [r["e2e"] - r["wall"] for r in good]
            both = [r["e2e"] - r["critical"] for r in good]
            print(
                f"| {c} | {len(results)} | {len(results) - len(good)} | {len(results) / elapsed:.0f} "
                f"| {pct(e2e, 0.5):.0f} / {pct(e2e, 0.99):.0f} "
                f"| {pct([r['ttfb'] for r in good], 0.5):.0f} "
                f"| {pct(server, 0.5):.1f} / {pct(server, 0.99):.1f} "
                f"| {pct(both, 0.5):.1f} / {pct(both, 0.99):.1f} | {rss:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
