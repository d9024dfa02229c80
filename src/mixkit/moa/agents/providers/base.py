"""What every provider implements: stream the text of one chat completion, fill in its usage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from mixkit.errors import ProviderError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
# (a tool turn also carries "tool_calls" or "tool_call_id": see providers/constrained.py)


class TransientError(ProviderError):
    """A failure worth retrying: connection refused/reset, 5xx, a stream cut midway."""


@dataclass
class Constraint:
    """What one call's answer must look like (structured output, tools; engine/structured.py).

    schema: the answer is JSON valid for it (a local model decodes under a grammar made from
    it). tools: OpenAI tool definitions the agent is shown (a local model reads them as text).
    pass_through: request fields a remote agent is sent as they are (response_format, tools,
    tool_choice, parallel_tool_calls)."""

    schema: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    pass_through: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sampling:
    """Per-call generation parameters."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None = None
    constraint: Constraint | None = None  # structured output / tools; None: free text


@dataclass
class Usage:
    """Token counts of one call, filled in by the provider as it learns them (None = unknown)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class Provider:
    """Base class. `stream` yields text pieces as they are generated and fills `usage`.

    It raises `RateLimited` (429), `Timeout`, `TransientError` (retryable) or `ProviderError`
    (not retryable). Deadlines are enforced by the caller (`Agent`), which cancels the iterator.
    """

    kind = "base"
    model = ""

    def stream(
        self,
        messages: list[Message],
        sampling: Sampling,
        usage: Usage,
        *,
        threads: int | None = None,
    ) -> AsyncIterator[str]:
        raise NotImplementedError
