"""Helpers for the server tests: mixtures over the fake backend, a server in a thread or process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from mixkit.moa import MoAConfig, parse_config
from mixkit.serve import Mixtures, ServeSettings, create_app
from mixkit.testing import free_port, http_ready, start_process


def mixture(
    name: str,
    url: str,
    proposers: list[str],
    aggregator: str,
    *,
    agg_url: str | None = None,
    urls: dict[str, str] | None = None,
    **top,
) -> MoAConfig:
    """A mixture whose agents are fake-backend behaviours: one proposer layer, then an aggregator.

    `urls` maps a behaviour to another backend's URL (e.g. one that will die mid-request).
    """
    urls = urls or {}
    agents = {
        f"p-{model}": {"provider": "openai", "base_url": urls.get(model, url), "model": model}
        for model in proposers
    }
    agents["agg"] = {
        "provider": "openai",
        "base_url": agg_url or urls.get(aggregator, url),
        "model": aggregator,
    }
    layers = [{"agents": [f"p-{m}" for m in proposers]}] if proposers else []
    data = {
        "name": name,
        "description": f"test mixture {name}",
        "agents": agents,
        "layers": layers,
        "aggregator": "agg",
        "deadline_s": 20,
        "retries": 1,
        **top,
    }
    return parse_config(data, name)


class ThreadServer:
    """The real app under uvicorn on a free port, in a thread of the test process."""

    def __init__(self, configs: list[MoAConfig], settings: ServeSettings | None = None):
        settings = settings or ServeSettings()
        self.app = create_app(Mixtures(configs, log=settings.log), settings)
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def health(self) -> dict:
        return httpx.get(f"{self.base}/health", timeout=10).json()

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class ServerProcess:
    """`mixkit serve` itself, as a user starts it, in a subprocess."""

    def __init__(self, home: Path, configs: list[Path], *args: str):
        self.port = free_port()
        self.home = home
        cmd = [sys.executable, "-c", "from mixkit.cli import main; main()", "serve"]
        cmd += ["--port", str(self.port), *sum((["-c", str(c)] for c in configs), []), *args]
        self.cmd = cmd
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = home / f"serve-{self.port}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        self.proc = start_process(
            self.cmd,
            http_ready(f"{self.base}/health"),
            what="mixkit serve",
            env={"MIXKIT_HOME": str(self.home)},
            log=self.stderr,
        )
        return self

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def peak_rss_kib(self) -> int:
        """VmHWM: the process's peak resident set size."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def logged_run(home: Path, run_id: str) -> tuple[dict, list[dict]]:
    """The run and its calls as `mixkit logs` reads them from SQLite (written moments after
    the response, by the server's log thread: wait for it)."""
    wait_for(lambda: _has_run(home, run_id), what=f"run {run_id} in the log")
    db = sqlite3.connect(home / "logs.db")
    db.row_factory = sqlite3.Row
    try:
        run = dict(db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())
        calls = [
            dict(r)
            for r in db.execute(
                "SELECT * FROM calls WHERE run_id = ? ORDER BY layer, id", (run_id,)
            )
        ]
    finally:
        db.close()
    return run, calls


def _has_run(home: Path, run_id: str) -> bool:
    if not (home / "logs.db").exists():
        return False
    db = sqlite3.connect(home / "logs.db")
    try:
        return db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None
    except sqlite3.OperationalError:  # the schema is being created
        return False
    finally:
        db.close()


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll `predicate` until truthy (a 'never hangs' bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
