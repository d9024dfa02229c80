"""One chat completion = one MoA run: start it, pull its pieces, map its failures to HTTP.

A client that goes away cancels the run: `until_disconnect` races the work against the ASGI
`http.disconnect` message, and cancelling the engine cancels every agent call it has open
(their HTTP connections are closed, local generation stops at the next token).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.types import Receive

from mixkit.errors import ConfigError, MixkitError
from mixkit.moa import Answer, EventHandler, LayerFailed, MoA, OutputInvalid, RunEvent
from mixkit.serve.errors import APIError
from mixkit.serve.mixtures import LogWriter
from mixkit.serve.schemas import ChatCompletionRequest
from mixkit.serve.tools import output_spec

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the ASGI server reports that the client went away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler itself is cancelled (server shutdown)
        gone.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)
    if task.cancelled():
        raise ClientGone()
    return task.result()


class Run:
    """A started MoA run for one request; `run_id` is known before the first token."""

    def __init__(
        self,
        moa: MoA,
        req: ChatCompletionRequest,
        writer: LogWriter,
        *,
        on_event: EventHandler | None = None,  # the web app's live view (web/live.py)
        conversation_id: str | None = None,
    ):
        self.writer = writer
        self.model = req.model
        self.max_tokens = req.answer_max_tokens()
        self.run_id = uuid.uuid4().hex
        self.gate: dict[str, Any] | None = None  # the gate's decision, once made

        def seen(event: RunEvent) -> None:
            if event.type == "gate":
                self.gate = event.data
            if on_event is not None:
                on_event(event)

        try:
            self.stream = moa.stream(
                messages=req.engine_messages(),
                max_tokens=self.max_tokens,
                run_id=self.run_id,
                temperature=req.temperature,
                top_p=req.top_p,
                on_event=seen,
                conversation_id=conversation_id,
                output=output_spec(req),
            )
        except ConfigError as e:  # the engine's own check of the conversation
            raise APIError(400, str(e), param=getattr(e, "param", "messages")) from None
        self.effective_max_tokens = moa.answer_max_tokens(self.max_tokens)

    def gate_header(self) -> str | None:
        """`alone; chosen=qwen` or `mix; chosen=a,b`: the gate's decision, for a header sent
        before the answer (None for an ungated run)."""
        if self.gate is None:
            return None
        return f"{self.gate['strategy']}; chosen={','.join(self.gate['chosen'])}"

    @property
    def answer(self) -> Answer | None:
        return self.stream.result

    async def next_piece(self) -> str | None:
        """The next piece of the answer, None at the end; APIError (502/504/400) on failure."""
        try:
            return await self.stream.__anext__()
        except StopAsyncIteration:
            await self.writer.backpressure(self.run_id)
            return None
        except MixkitError as e:
            await self.writer.backpressure(self.run_id)
            raise run_error(e, self.model) from None

    async def collect(self) -> Answer:
        """Run to the end (non-streaming)."""
        while await self.next_piece() is not None:
            pass
        assert self.stream.result is not None
        return self.stream.result

    async def close(self) -> None:
        """Stop the run if it is still going (its open agent calls are cancelled)."""
        try:
            await self.stream.aclose()
        except (RuntimeError, StopAsyncIteration):  # already finished or running elsewhere
            pass
        await self.writer.backpressure(self.run_id)


def run_error(err: MixkitError, model: str) -> APIError:
    """A failed run as an HTTP error naming the agents that failed: 504 if time ran out."""
    if isinstance(err, ConfigError):  # OutputSpecError names its field
        return APIError(400, f"mixture '{model}': {err}", param=getattr(err, "param", "messages"))
    if isinstance(err, OutputInvalid):
        return APIError(502, f"mixture '{model}': {err}", code="invalid_output")
    timed_out = isinstance(err, LayerFailed) and err.deadline_expired
    return APIError(
        504 if timed_out else 502,
        f"mixture '{model}' failed: {err}",
        code="agents_timed_out" if timed_out else "agents_failed",
    )
