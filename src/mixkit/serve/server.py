"""Run the app with uvicorn on a socket we bind ourselves, so a busy port is a one-line error.

Shutdown (SIGINT/SIGTERM) is uvicorn's graceful one: stop accepting, let in-flight requests
finish for up to `grace_s`, then cancel what is left (which cancels those runs' agent calls).
"""

from __future__ import annotations

import socket

import uvicorn
from starlette.types import ASGIApp

from mixkit.errors import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port; ConfigError naming the fix if it is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConfigError(f"--host {host}: cannot resolve it ({e})") from None
    family, _, proto, _, address = infos[0]
    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only
    # then, and without it Nagle + delayed ACKs delay every response (docs/benchmarks.md).
    sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e} "
            "(is another server using it? pick a free one with --port)"
        ) from None
    return sock


def run(app: ASGIApp, sock: socket.socket, *, grace_s: float, log_level: str = "warning") -> None:
    """Serve `app` on `sock` until SIGINT/SIGTERM, then shut down gracefully."""
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=log_level in ("info", "debug", "trace"),
        timeout_graceful_shutdown=grace_s,  # type: ignore[arg-type]  # typed int, used as float
        backlog=2048,
    )
    uvicorn.Server(config).run(sockets=[sock])
