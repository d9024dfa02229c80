"""Start a server process and wait until it answers; stop it for sure. Used by the fake backend,
the tests (llama.cpp's server, `mixkit serve`) and the benchmarks alike."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ready(url: str) -> Callable[[], object]:
    """A `ready` check for `start_process`: GET `url` answers (any status but a refusal)."""

    def check() -> object:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:  # it answered: it is up
            return e.code

    return check


def start_process(
    cmd: list[str],
    ready: Callable[[], object],
    *,
    what: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout_s: float = 60.0,
) -> subprocess.Popen[bytes]:
    """Start `cmd`; return once `ready()` returns (an OSError means "not yet").

    Its output goes to `log` (a file, not a pipe: a chatty server would fill a pipe and block),
    or to a temporary file. If it exits or is not ready within `timeout_s`, it is killed and a
    RuntimeError quotes the end of its output.
    """
    out: IO[bytes] = open(log, "wb") if log else tempfile.TemporaryFile()  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(out)}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{what} did not start within {timeout_s:.0f}s: {_tail(out)}")
        try:
            ready()
            return proc
        except OSError:
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(out: IO[bytes], chars: int = 2000) -> str:
    out.flush()
    out.seek(0)
    return out.read().decode(errors="replace")[-chars:]
