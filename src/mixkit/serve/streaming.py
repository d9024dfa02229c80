"""Server-sent events for `stream: true`: chunks go out as the aggregator makes its tokens.

When the final answer comes from a program agent, its program streams first as
`reasoning_content` deltas, then the answer as `content` deltas.

`SSEResponse` owns the run's end: whether the stream finishes, fails midway (an OpenAI-shaped
`{"error": ...}` event, which the `openai` SDK raises as an APIError) or the client goes away
(the run is cancelled), its cleanup runs exactly once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from mixkit.moa import Reasoning
from mixkit.serve import schemas
from mixkit.serve.errors import APIError
from mixkit.serve.runs import Run, wait_for_disconnect
from mixkit.serve.tools import tool_call_deltas


def sse(obj: dict | str) -> bytes:
    """One SSE event."""
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def piece_delta(piece: str) -> dict[str, str]:
    """A piece's delta: a program agent's program (Reasoning) goes out as `reasoning_content`,
    as OpenAI-compatible reasoning servers send their thinking; the answer as `content`."""
    return {"reasoning_content": piece} if isinstance(piece, Reasoning) else {"content": piece}


async def chunks(run: Run, first: str | None, include_usage: bool) -> AsyncIterator[bytes]:
    """The run as `chat.completion.chunk` events, ending with `[DONE]` (or an error event).
    `first`: the answer's first piece (None: the run ended without text, e.g. a tool call)."""
    created, model, rid = schemas.now(), run.model, run.run_id
    opening = piece_delta(first) if first is not None else {"content": None}
    yield sse(schemas.chunk(rid, model, created, {"role": "assistant", **opening}))
    try:
        while first is not None and (piece := await run.next_piece()) is not None:
            yield sse(schemas.chunk(rid, model, created, piece_delta(piece)))
    except APIError as e:  # the status line is long gone: report it in the stream
        yield sse(e.body())
        return
    answer = run.answer
    assert answer is not None
    for delta in tool_call_deltas(answer.tool_calls or []):  # a call goes out whole, in deltas
        yield sse(schemas.chunk(rid, model, created, delta))
    finish = schemas.finish_reason(answer, run.effective_max_tokens)
    yield sse(
        schemas.chunk(rid, model, created, {}, finish, mixkit=schemas.mixkit_extension(answer))
    )
    if include_usage:
        last = schemas.chunk(rid, model, created, {}, usage=schemas.usage(answer))
        last["choices"] = []
        yield sse(last)
    yield sse("[DONE]")


class SSEResponse(Response):
    """Streams `events`; cancels them when the client disconnects; always calls `cleanup`."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        cleanup: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
    ):
        super().__init__(content=None, status_code=200, headers=headers)
        # Response sized the empty body (content-length: 0); a stream has no length.
        self.raw_headers = [h for h in self.raw_headers if h[0] != b"content-length"]
        self.raw_headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        self.events = events
        self._cleanup = cleanup
        self._cleaned = False

    async def cleanup(self) -> None:
        """Free the run's slot once, as soon as the run is over (before the last byte goes)."""
        if not self._cleaned:
            self._cleaned = True
            await self._cleanup()

    async def _send_all(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        # A client may send its next request the moment the body ends: free the slot first,
        # or a client at the limit would get a spurious 429.
        await self.cleanup()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self._send_all(send))
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({streaming, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, gone):
                task.cancel()
            results = await asyncio.gather(streaming, gone, return_exceptions=True)
            await self.events.aclose()  # type: ignore[attr-defined]
            await self.cleanup()
        error = results[0]
        if isinstance(error, BaseException) and not isinstance(
            error,
            (asyncio.CancelledError, OSError),  # OSError: the client went away mid-send
        ):
            raise error
