"""POST /api/runs: start a run and stream its per-agent events as server-sent events.

The body is a chat-completions body (`model`, `messages`, optional `max_tokens`, `temperature`,
`top_p`) plus an optional `conversation_id` that groups the turns of a conversation in the log.
Each event is one engine RunEvent (mixkit.moa.events), as

    event: call_token
    data: {"type": "call_token", "run_id": "...", "t": 0.42, "layer": 1, "agent": "p#2", "text": "Hi", "data": {}}

from `run_start` to `run_end`; a failed run also gets an `error` event with an OpenAI-shaped body.
The run holds one of the server's `--max-concurrent` slots; closing the connection (the page's
stop button) cancels the run and frees its slot at once. The response is 4xx JSON, not a stream,
when the request itself is wrong (bad body, unknown mixture, no key, 429 at the limit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator

from fastapi import Request
from starlette.responses import Response

from mixkit.serve import schemas
from mixkit.serve.errors import APIError, error_body
from mixkit.serve.limits import read_body
from mixkit.serve.request import decode_json
from mixkit.serve.runs import Run
from mixkit.serve.settings import ServeSettings
from mixkit.serve.streaming import SSEResponse
from mixkit.serve.web.guard import DATA_HEADERS

log = logging.getLogger("mixkit.serve")
CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_END = object()


def sse_event(kind: str, payload: dict) -> bytes:
    """One named SSE event (EventSource-style clients can listen per type)."""
    data = json.dumps(payload, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def parse_live_request(
    raw: bytes, settings: ServeSettings
) -> tuple[schemas.ChatCompletionRequest, str | None]:
    """The chat request and the conversation id; APIError(400) naming what is wrong."""
    data = decode_json(raw)
    conversation_id = data.pop("conversation_id", None) if isinstance(data, dict) else None
    if conversation_id is not None and not (
        isinstance(conversation_id, str) and CONVERSATION_ID.match(conversation_id)
    ):
        raise APIError(
            400, "conversation_id must be 1-64 letters, digits, '-' or '_'", param="conversation_id"
        )
    if isinstance(data, dict):
        data.pop("stream", None)  # this endpoint always streams
    req = schemas.parse_request(
        data, max_messages=settings.max_messages, max_tokens=settings.max_tokens
    )
    return req, conversation_id


async def live_run(request: Request) -> Response:
    settings, mixtures, limiter = (
        request.app.state.settings,
        request.app.state.mixtures,
        request.app.state.limiter,
    )
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise APIError(415, "send the run as 'Content-Type: application/json'", code="bad_type")
    raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    req, conversation_id = parse_live_request(raw, settings)
    moa = mixtures.get(req.model)
    queue: asyncio.Queue = asyncio.Queue()
    limiter.acquire()
    try:
        run = Run(
            moa, req, mixtures.writer, on_event=queue.put_nowait, conversation_id=conversation_id
        )
    except BaseException:
        limiter.release()
        raise
    pump = asyncio.ensure_future(run.collect())
    pump.add_done_callback(lambda _: queue.put_nowait(_END))

    async def finish() -> None:
        if not pump.done():
            pump.cancel()  # the client went away: cancel the run (its agents' calls too)
        await asyncio.gather(pump, return_exceptions=True)
        await run.close()
        limiter.release()

    headers = {**DATA_HEADERS, "x-mixkit-run-id": run.run_id}
    return SSEResponse(_events(queue, pump), finish, headers=headers)


async def _events(queue: asyncio.Queue, pump: asyncio.Future) -> AsyncIterator[bytes]:
    """The queued RunEvents as SSE, several per write when they come fast, until the run ends."""
    while True:
        items = [await queue.get()]
        while not queue.empty():
            items.append(queue.get_nowait())
        out = b"".join(sse_event(e.type, e.to_dict()) for e in items if e is not _END)
        if out:
            yield out
        if _END in items:
            break
    error = None if pump.cancelled() else pump.exception()
    if isinstance(error, APIError):
        yield sse_event("error", error.body())
    elif error is not None:  # a bug, not a failed run: keep the traceback in the server log
        log.error("the run behind a live feed raised", exc_info=error)
        yield sse_event("error", error_body(500, f"internal error ({type(error).__name__})"))
