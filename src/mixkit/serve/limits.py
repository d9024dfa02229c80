"""Request limits: a bounded body reader (413) and a non-queueing concurrency limit (429)."""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from mixkit.serve.errors import APIError


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body: 413 once it passes `max_bytes` (declared or streamed), 408 if it has
    not all arrived within `timeout_s`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "invalid Content-Length header", code="invalid_body")
        if int(declared) > max_bytes:
            raise _too_large(max_bytes)
    try:
        return await asyncio.wait_for(_read(request, max_bytes), timeout_s)
    except asyncio.TimeoutError:
        raise APIError(
            408, f"the request body did not arrive within {timeout_s:g}s", code="body_timeout"
        ) from None


async def _read(request: Request, max_bytes: int) -> bytes:
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > max_bytes:  # chunked bodies declare nothing: count as they come
                raise _too_large(max_bytes)
    except ClientDisconnect:
        raise APIError(400, "the client went away while sending the body") from None
    return bytes(body)


def _too_large(max_bytes: int) -> APIError:
    return APIError(
        413,
        f"request body is larger than this server's limit of {max_bytes} bytes",
        code="request_too_large",
    )


class RunLimiter:
    """At most `limit` runs at once. Past it, `acquire` fails at once (the caller answers 429)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.running = 0

    def acquire(self) -> None:
        # Single-threaded (the event loop), so a plain counter cannot race.
        if self.running >= self.limit:
            raise APIError(
                429,
                f"the server is running its limit of {self.limit} mixtures; retry shortly",
                code="too_many_requests",
                headers={"Retry-After": "1"},
            )
        self.running += 1

    def release(self) -> None:
        self.running -= 1
