"""An agent is a provider + a model + sampling parameters (+ a persona). One call = one CallRecord.

`Agent.stream` is the only place that retries. It retries typed, retryable errors (connection
errors, 5xx, cut streams, 429 after its Retry-After) with exponential backoff, never past the
call's deadline, and never once a piece of text has reached the caller (it cannot be taken back).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any

from mixkit.errors import ConfigError, ProviderError, RateLimited, Timeout
from mixkit.moa.agents.providers.base import Message, Provider, Sampling, TransientError, Usage
from mixkit.moa.agents.providers.local import LocalProvider
from mixkit.moa.config import AgentConfig


@dataclass
class CallRecord:
    """One agent call, as traced: who, when, how long, how many tokens, and how it ended."""

    layer: int
    agent: str  # label: the agent name, with "#i" when a layer repeats it (Self-MoA)
    provider: str
    model: str
    started_at: float = 0.0  # unix time
    latency_s: float | None = None
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 0
    outcome: str = "pending"  # ok | error | cancelled
    error: str | None = None
    response: str = ""
    cost_usd: float | None = None  # from the agent's declared prices; None when unpriced
    # a program agent's programs (agents/program.py), one dict per attempt: program, status,
    # output, error, wall_s, mode; None for a text agent
    programs: list[dict[str, Any]] | None = None

    def price(self, cfg: AgentConfig) -> None:
        """Fill `cost_usd` from the agent's declared prices (USD per million tokens)."""
        if cfg.price_in is None and cfg.price_out is None:
            return
        self.cost_usd = (
            (self.prompt_tokens or 0) * (cfg.price_in or 0.0)
            + (self.completion_tokens or 0) * (cfg.price_out or 0.0)
        ) / 1e6

    def to_dict(self) -> dict:
        return asdict(self)


def model_calls(calls: list[CallRecord]) -> int:
    """Model calls a run made: one per agent call, except that a program agent makes one per
    program it asked for (a retry after a failed program is a second call)."""
    return sum(len(c.programs) if c.programs else 1 for c in calls)


@dataclass
class CallOptions:
    """How one agent call runs.

    deadline: a `time.monotonic()` value no attempt or retry wait may pass. sampling: None takes
    the agent's own. retries: retryable failures retried at most this often. threads: a local
    model's share of the cores. on_piece(text) sees every piece as it arrives, buffered or not
    (the pieces of an attempt that is then retried included); on_retry(attempt, error) is called
    before attempt number `attempt` (2 = the first retry) starts. program_retries: see below.
    """

    deadline: float
    sampling: Sampling | None = None
    retries: int = 2
    threads: int | None = None
    on_piece: Callable[[str], None] | None = None
    on_retry: Callable[[int, str], None] | None = None
    program_retries: int | None = None  # a program agent's new programs after a failed one
    # (None: its config's `retries`; a vote passes what its budget of model calls leaves)


def make_provider(name: str, cfg: AgentConfig) -> Provider:
    """Build the provider of an agent config (no network, no model loading)."""
    if cfg.provider == "local":
        try:
            return LocalProvider(cfg.model, n_ctx=cfg.n_ctx)
        except ConfigError as e:
            raise ConfigError(f"agents.{name}.model: {e}") from None
    # lazy: the openai SDK is slow to import, and a mixture of local agents never needs it
    from mixkit.moa.agents.providers.openai_compat import OpenAICompatProvider

    assert cfg.base_url is not None  # validated by AgentConfig
    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        raise ConfigError(
            f"agents.{name}.api_key_env: environment variable {cfg.api_key_env} is not set (export it first)"
        )
    return OpenAICompatProvider(
        cfg.base_url, cfg.model, api_key_env=cfg.api_key_env, stream_usage=cfg.stream_usage
    )


async def _within(
    pieces: AsyncIterator[str], deadline: float, start: float
) -> AsyncGenerator[str, None]:
    """A provider's pieces until `deadline` (a monotonic time), then Timeout; closes `pieces`."""
    it = pieces.__aiter__()
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                piece = await asyncio.wait_for(it.__anext__(), remaining)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                took = time.monotonic() - start
                raise Timeout(f"no answer within the deadline ({took:.1f}s)") from None
            yield piece
    finally:
        await it.aclose()  # type: ignore[attr-defined]


@dataclass
class Agent:
    """A named, configured LLM caller."""

    name: str
    config: AgentConfig
    provider: Provider
    backoff_s: float = 0.5  # first retry delay; doubles each attempt
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    @classmethod
    def from_config(cls, name: str, cfg: AgentConfig) -> Agent:
        return cls(name, cfg, make_provider(name, cfg))

    def sampling(self, slot: int = 0, max_tokens: int | None = None) -> Sampling:
        """Sampling params for slot `slot` of a layer; repeated slots get different seeds."""
        c = self.config
        seed = (
            c.seed + slot
            if c.seed is not None
            else (self._rng.randrange(2**31) if c.temperature > 0 else 0)
        )
        return Sampling(
            max_tokens=max_tokens or c.max_tokens,
            temperature=c.temperature,
            top_p=c.top_p,
            seed=seed,
        )

    def with_persona(self, messages: list[Message]) -> list[Message]:
        """Prepend (or merge into an existing system message) the agent's persona."""
        if not self.config.system:
            return messages
        if messages and messages[0]["role"] == "system":
            merged = f"{self.config.system}\n\n{messages[0]['content']}"
            return [{"role": "system", "content": merged}, *messages[1:]]
        return [{"role": "system", "content": self.config.system}, *messages]

    def new_record(self, layer: int, label: str) -> CallRecord:
        return CallRecord(
            layer=layer, agent=label, provider=self.provider.kind, model=self.config.model
        )

    async def stream(
        self,
        messages: list[Message],
        record: CallRecord,
        call: CallOptions,
        *,
        buffered: bool = False,
    ) -> AsyncGenerator[str, None]:
        """Yield the answer's pieces; fill `record`.

        Unbuffered, pieces are yielded as they arrive, so a failure after the first piece cannot
        be retried. Buffered (proposers), the answer is yielded once an attempt succeeds, so a
        stream cut midway is retried from scratch.

        Raises ProviderError (or RateLimited / Timeout) when the call fails for good; `record`
        then holds the outcome and the reason.
        """
        messages = self.with_persona(messages)
        record.started_at = time.time()
        start = time.monotonic()
        emitted = False
        pieces: list[str] = []
        try:
            for attempt in range(call.retries + 1):
                record.attempts = attempt + 1
                pieces.clear()
                try:
                    attempt_pieces = self._attempt(messages, record, call, start, pieces)
                    async with aclosing(attempt_pieces) as arriving:
                        async for piece in arriving:
                            if not buffered:
                                emitted = True
                                yield piece
                    if buffered:
                        yield "".join(pieces)
                    record.outcome = "ok"
                    return
                except (TransientError, RateLimited) as e:
                    wait = self._retry_wait(e, attempt)
                    if (
                        emitted
                        or attempt >= call.retries
                        or time.monotonic() + wait >= call.deadline
                    ):
                        raise
                    if call.on_retry is not None:
                        call.on_retry(attempt + 2, f"{type(e).__name__}: {e}")
                    await asyncio.sleep(wait)
        except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: the consumer closed us
            record.outcome, record.error = "cancelled", "cancelled (quorum met or run stopped)"
            raise
        except ProviderError as e:
            record.outcome, record.error = "error", f"{type(e).__name__}: {e}"
            raise
        finally:
            record.latency_s = time.monotonic() - start
            record.response = "".join(pieces)
            record.price(self.config)

    async def _attempt(
        self,
        messages: list[Message],
        record: CallRecord,
        call: CallOptions,
        start: float,
        pieces: list[str],
    ) -> AsyncGenerator[str, None]:
        """One try: the provider's pieces within the deadline, collected into `pieces`."""
        usage = Usage()
        sampling = call.sampling or self.sampling()
        arriving = self.provider.stream(messages, sampling, usage, threads=call.threads)
        async with aclosing(_within(arriving, call.deadline, start)) as within:
            async for piece in within:
                if record.ttft_s is None:
                    record.ttft_s = time.monotonic() - start
                pieces.append(piece)
                if call.on_piece is not None:
                    call.on_piece(piece)
                yield piece
        if not "".join(pieces).strip():
            raise ProviderError("empty completion")
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens

    def _retry_wait(self, err: ProviderError, attempt: int) -> float:
        if isinstance(err, RateLimited) and err.retry_after is not None:
            return err.retry_after
        return self.backoff_s * (2**attempt) * (0.8 + 0.4 * self._rng.random())  # jittered

    async def complete(self, messages: list[Message], record: CallRecord, call: CallOptions) -> str:
        """Collect the whole answer (proposers): `stream` buffered. Raises like `stream`."""
        pieces = self.stream(messages, record, call, buffered=True)
        return "".join([piece async for piece in pieces])
