"""What a run is doing, as it does it: a stream of RunEvents for viewers (the web playground).

Pass `on_event=` to `MoA.stream / run / arun` or `moa.ask / moa.stream`. It is called
synchronously on the event loop thread, so it must be cheap; an exception from it is logged and
ignored (a viewer must never break a run). Event types, in the order they occur:

    run_start     data: mixture, layers (labels per proposer layer), aggregator, deadline_s
    call_start    layer, agent; data: model, provider ("local" | "openai")
    call_token    layer, agent, text: every piece of every call as it arrives (proposers too)
    call_retry    layer, agent; data: attempt (the attempt now starting, 2 = first retry), error.
                  The failed attempt's pieces were already sent: a viewer clears them.
    call_end      layer, agent; data: CallRecord.to_dict() (outcome ok | error | cancelled ...)
    layer_end     layer; data: ok, calls (the final aggregator's layer too)
    gate          data: scores, chosen, skipped, strategy            (the gated MoA)
    early_exit    layer; data: agreed, answers                       (the gated MoA)
    answer_reasoning  text: a program agent's program as it is written, before the answer
                  (the stream yields these pieces as agents.program.Reasoning)
    answer_token  text: the final answer's pieces, the same text the caller's stream yields
    run_end       data: outcome, error, wall_s, critical_path_s, ttft_s, prompt_tokens,
                  completion_tokens

Layers are 1-based; the final aggregator's layer is len(layers) + 1. `t` is seconds since the
run started (time.monotonic based).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mixkit.moa.agents.agent import CallRecord

log = logging.getLogger("mixkit.moa")

EVENT_TYPES = (
    "run_start",
    "call_start",
    "call_token",
    "call_retry",
    "call_end",
    "layer_end",
    "gate",
    "early_exit",
    "answer_reasoning",
    "answer_token",
    "run_end",
)


@dataclass
class RunEvent:
    """One thing that happened in a run (see the module docstring for the types)."""

    type: str
    run_id: str
    t: float  # seconds since the run started
    layer: int | None = None  # 1-based; the final aggregator's layer is len(layers) + 1
    agent: str | None = None  # the call's label, as in CallRecord.agent ("qwen#2")
    text: str | None = None  # token text for *_token events
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the SSE payload of the playground)."""
        return asdict(self)


EventHandler = Callable[[RunEvent], None]


class Emitter:
    """Makes a run's events and hands them to its handler; a failing handler is logged once
    per event and otherwise ignored. With no handler, emitting costs one attribute check."""

    def __init__(self, run_id: str, handler: EventHandler | None, start: float | None = None):
        self.run_id = run_id
        self.handler = handler
        self.start = time.monotonic() if start is None else start

    def __call__(
        self,
        type: str,
        *,
        layer: int | None = None,
        agent: str | None = None,
        text: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        if self.handler is None:
            return
        event = RunEvent(
            type, self.run_id, time.monotonic() - self.start, layer, agent, text, data or {}
        )
        try:
            self.handler(event)
        except Exception:  # a viewer's bug must not fail the run it watches
            log.exception("on_event raised on a %s event (ignored)", type)

    def call_start(self, record: CallRecord) -> None:
        data = {"model": record.model, "provider": record.provider}
        self("call_start", layer=record.layer, agent=record.agent, data=data)

    def call_hooks(
        self, record: CallRecord
    ) -> tuple[Callable[[str], None] | None, Callable[[int, str], None] | None]:
        """`on_piece` and `on_retry` for `Agent.stream`: call_token and call_retry events
        (None without a handler, so that an unwatched run pays nothing per token)."""
        if self.handler is None:
            return None, None

        def on_piece(text: str) -> None:
            self("call_token", layer=record.layer, agent=record.agent, text=text)

        def on_retry(attempt: int, error: str) -> None:
            data = {"attempt": attempt, "error": error}
            self("call_retry", layer=record.layer, agent=record.agent, data=data)

        return on_piece, on_retry

    def call_end(self, record: CallRecord) -> None:
        self("call_end", layer=record.layer, agent=record.agent, data=record.to_dict())

    def layer_end(self, layer: int, ok: int, calls: int) -> None:
        self("layer_end", layer=layer, data={"ok": ok, "calls": calls})
