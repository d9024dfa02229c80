"""Any OpenAI-compatible chat endpoint (OpenAI, Together, vLLM, Ollama, llama.cpp server).

The `openai` SDK is the client, with its own retries off (`max_retries=0`): `Agent` retries only
typed, retryable errors within the call's deadline. Errors are mapped to mixkit's tree here, and
the API key is scrubbed from every message we raise.
"""

from __future__ import annotations

import email.utils
import functools
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from mixkit.errors import ConfigError, ProviderError, RateLimited, Timeout
from mixkit.moa.agents.providers.base import Message, Provider, Sampling, TransientError, Usage


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or an HTTP date) or `retry-after-ms`."""
    if headers is None:
        return None
    if ms := headers.get("retry-after-ms"):
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


@functools.lru_cache(maxsize=1)
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context (httpx's default) for every call. Building one loads the CA bundle, which
    per call was the server's throughput limit (docs/benchmarks.md, Server)."""
    return httpx.create_ssl_context()


def add_tool_call_deltas(calls: dict[int, dict[str, str]], deltas: list) -> None:
    """Accumulate streamed `tool_calls` deltas (id and name once, arguments in pieces)."""
    for d in deltas:
        call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
        call["id"] = d.id or call["id"]
        if d.function is not None:
            call["name"] = d.function.name or call["name"]
            call["arguments"] += d.function.arguments or ""


def read_chunk(chunk: Any, usage: Usage, calls: dict[int, dict[str, str]]) -> list[str]:
    """A stream chunk's text pieces; its usage, finish reason and tool-call deltas recorded."""
    if chunk.usage is not None:
        usage.prompt_tokens = chunk.usage.prompt_tokens
        usage.completion_tokens = chunk.usage.completion_tokens
    texts = []
    for choice in chunk.choices:
        if choice.finish_reason:
            usage.finish_reason = choice.finish_reason
        if choice.delta and choice.delta.content:
            texts.append(choice.delta.content)
        if choice.delta and choice.delta.tool_calls:
            add_tool_call_deltas(calls, choice.delta.tool_calls)
    return texts


def tool_calls_text(calls: dict[int, dict[str, str]]) -> str:
    """`{"tool_calls": [{"id", "name", "arguments"}]}`, arguments parsed when they are JSON."""
    out = []
    for _, c in sorted(calls.items()):
        try:
            arguments: object = json.loads(c["arguments"] or "{}")
        except json.JSONDecodeError:
            arguments = c["arguments"]  # kept as sent: the engine's check reports it
        out.append({"id": c["id"], "name": c["name"], "arguments": arguments})
    return json.dumps({"tool_calls": out})


class OpenAICompatProvider(Provider):
    """Streams chat completions from `base_url` with the `openai` SDK."""

    kind = "openai"

    def __init__(
        self, base_url: str, model: str, api_key_env: str | None = None, stream_usage: bool = True
    ):
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.stream_usage = stream_usage

    def _api_key(self) -> str:
        if not self.api_key_env:
            return "not-needed"  # local servers ignore it; the SDK insists on a value
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"environment variable {self.api_key_env} is not set (named by api_key_env)"
            )
        return key

    def _scrub(self, text: str, key: str) -> str:
        return text.replace(key, "***") if key and key != "not-needed" else text

    def _typed(self, e: Exception, key: str, pieces: int) -> ProviderError:
        """The mixkit error for what the SDK or the stream raised (the API key scrubbed out)."""
        if isinstance(e, openai.RateLimitError):
            return RateLimited(
                self._scrub(f"429 rate limited by {self.base_url}", key),
                retry_after=parse_retry_after(e.response.headers),
            )
        if isinstance(e, openai.APITimeoutError):
            return Timeout(f"timed out talking to {self.base_url}")
        if isinstance(e, openai.APIConnectionError):
            return TransientError(f"cannot connect to {self.base_url}: {e.__cause__ or e}")
        if isinstance(e, openai.APIStatusError):
            body = self._scrub(e.response.text[:200] if e.response is not None else "", key)
            cls = TransientError if e.status_code >= 500 else ProviderError
            return cls(f"HTTP {e.status_code} from {self.base_url}: {body}")
        if isinstance(e, (httpx.TransportError, httpx.StreamError)):  # broke after it started
            return TransientError(
                f"stream from {self.base_url} broke after {pieces} pieces: {type(e).__name__}"
            )
        if isinstance(e, (json.JSONDecodeError, openai.APIResponseValidationError)):
            return ProviderError(f"malformed response from {self.base_url}: {type(e).__name__}")
        message = e.message if isinstance(e, openai.APIError) else str(e)
        # an error object inside the stream
        return ProviderError(self._scrub(f"error from {self.base_url}: {message}", key))

    def _extra_body(self, sampling: Sampling) -> dict[str, object]:
        """Fields sent as JSON body fields (works on every SDK version)."""
        extra: dict[str, object] = {}
        if self.stream_usage:
            extra["stream_options"] = {"include_usage": True}
        if sampling.seed is not None:
            extra["seed"] = sampling.seed
        if sampling.constraint is not None:  # structured output / tools, passed as asked
            extra.update(sampling.constraint.pass_through)
        return extra

    async def stream(
        self,
        messages: list[Message],
        sampling: Sampling,
        usage: Usage,
        *,
        threads: int | None = None,
    ) -> AsyncIterator[str]:
        key = self._api_key()
        # The client is created per call: it binds to the running event loop, and each
        # `ask()` may run in a fresh loop. Deadlines are enforced by the caller.
        client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=key,
            max_retries=0,
            timeout=openai.Timeout(None, connect=10.0),
            http_client=openai.DefaultAsyncHttpxClient(verify=shared_ssl_context()),
        )
        extra = self._extra_body(sampling)
        calls: dict[int, dict[str, str]] = {}  # streamed tool calls by index
        pieces = 0
        try:
            stream = await client.chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                stream=True,
                extra_body=extra or None,
            )
            async for chunk in stream:
                for text in read_chunk(chunk, usage, calls):
                    pieces += 1
                    yield text
            if calls:  # the calls, as the one JSON text the engine reads (engine/tools.py)
                pieces += 1
                yield tool_calls_text(calls)
        except (
            openai.APIError,
            httpx.TransportError,
            httpx.StreamError,
            json.JSONDecodeError,
        ) as e:
            raise self._typed(e, key, pieces) from None
        finally:
            await client.close()
        if usage.finish_reason is None:
            raise TransientError(
                f"stream from {self.base_url} ended without a finish_reason after {pieces} pieces"
            )
        if usage.completion_tokens is None:
            usage.completion_tokens = pieces  # servers without stream usage send ~1 token per piece
