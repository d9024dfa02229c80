"""The program agent (`kind = "program"`): its model writes a Python program, the program runs in a
sandbox (mixkit.sandbox), and the agent answers with what the program printed.

    ask the model (program_text.py's prompt) ──> reply ──> extract_program ──> complete_program
        (program_problem: plainly no program? not run) ──> Sandbox.run_python
        ──> ok: printed_answer(stdout), e.g. "-7.0\\n" -> "-7"
        └─> error / timeout / no output / not run: show the model the program and the error,
            ask again (`retries` times, at RETRY_TEMPERATURE at least), else ProgramFailed

Streamed (the final answer), the model's reply arrives first as `Reasoning` pieces, then the answer;
collected (a proposer), the answer is one `ProgramAnswer`: a str (the answer) that also carries
the program, its output and status, for votes (answers.final_answer) and the synthesis prompt
(engine/prompts.py). Every attempt is recorded in `CallRecord.programs`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from mixkit.errors import ProviderError, Timeout
from mixkit.moa.agents.agent import Agent, CallOptions, CallRecord
from mixkit.moa.agents.program_text import (
    RETRY,
    complete_program,
    extract_program,
    printed_answer,
    program_messages,
    program_problem,
)
from mixkit.moa.agents.providers.base import Message, Sampling
from mixkit.moa.answers import final_answer, normalize_answer
from mixkit.moa.config import AgentConfig
from mixkit.sandbox import Limits, RunResult, Sandbox, SandboxUnavailable

MIN_RUN_S = 0.5  # a program is not started with less time than this left before the deadline
RETRY_TEMPERATURE = 0.7  # the least temperature a retry samples at (see _hotter)
OUTPUT_CHARS = 2000  # program output kept in the run log, per attempt


class Reasoning(str):
    """A streamed piece that shows how the answer is made (a program agent's program), not a
    piece of the answer: served as `reasoning_content`, printed dim by `mixkit ask`."""


class ProgramAnswer(str):
    """A program agent's answer (the str's value) with how it was made."""

    program: str
    output: str
    status: str

    def __new__(cls, answer: str, program: str, output: str, status: str) -> ProgramAnswer:
        self = super().__new__(cls, answer)
        self.program, self.output, self.status = program, output, status
        return self

    def __getnewargs__(self) -> tuple[str, str, str, str]:  # type: ignore[override]
        """What copy and pickle rebuild it from (an event's data is deep-copied)."""
        return str(self), self.program, self.output, self.status

    @property
    def answer_key(self) -> str | None:
        """The key votes and agreement compare (answers.final_answer uses it)."""
        return final_answer(str(self)) or normalize_answer(str(self))


class ProgramFailed(ProviderError):
    """A program agent ended with no answer: every program failed, or no sandbox would run it."""


def _hotter(call: CallOptions, own: Sampling) -> CallOptions:
    """`call` for a retry: sampled at RETRY_TEMPERATURE at least, so that the model does not
    write the failed program again (at a low temperature the 0.5B coder did, word for word)."""
    sampling = call.sampling or own
    if sampling.temperature >= RETRY_TEMPERATURE:
        return call
    return replace(call, sampling=replace(sampling, temperature=RETRY_TEMPERATURE))


@dataclass
class _Tried:
    """One attempt's program and what came of it (`status` "not run": `program_problem`)."""

    code: str
    status: str
    error: str
    stdout: str
    entry: dict[str, Any]


@dataclass
class _Attempts:
    """One program agent call in progress: the conversation so far and what each try made."""

    messages: list[Message]
    record: CallRecord
    start: float
    log: list[dict[str, Any]] = field(default_factory=list)


def _entry(attempt: int, code: str, result: RunResult) -> dict[str, Any]:
    """One attempt as the run log keeps it (CallRecord.programs)."""
    return {
        "attempt": attempt,
        "program": code,
        "status": result.status,
        "output": result.stdout[-OUTPUT_CHARS:],
        "error": result.error_summary() or None,
        "wall_s": round(result.wall_s, 3),
        "mode": result.mode,
    }


@dataclass
class ProgramAgent(Agent):
    """An agent whose answers are what its programs print (module docstring). Same interface as
    Agent: `stream` (the final answer: Reasoning pieces, then the answer) and `complete`."""

    sandbox: Sandbox | None = None

    def __post_init__(self) -> None:
        if self.sandbox is None:  # built now, probed on the first call (Sandbox.check)
            self.sandbox = Sandbox(self.config.sandbox)

    async def stream(
        self,
        messages: list[Message],
        record: CallRecord,
        call: CallOptions,
        *,
        buffered: bool = False,
    ) -> AsyncGenerator[str, None]:
        """Reasoning pieces (the model's replies, unbuffered only), then the answer. Asked for
        structured output or a tool call (a constraint), it answers as a text agent does.

        Raises ProgramFailed when no program printed an answer, Timeout at the deadline, or
        the model's ProviderError; `record` then holds the outcome and the reason."""
        if call.sampling is not None and call.sampling.constraint is not None:
            # structured output or tools (engine/output.py): no program prints those; the
            # model answers as a text agent's would
            async with aclosing(super().stream(messages, record, call, buffered=buffered)) as text:
                async for piece in text:
                    yield piece
            return
        run = _Attempts(program_messages(messages), record, time.monotonic())
        record.started_at, record.programs, record.attempts = time.time(), run.log, 0
        try:
            await self._check_sandbox()
            async for piece in self._attempts(run, call, buffered):
                yield piece
            record.outcome = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            record.outcome, record.error = "cancelled", "cancelled (quorum met or run stopped)"
            raise
        except ProviderError as e:
            record.outcome, record.error = "error", f"{type(e).__name__}: {e}"
            raise
        finally:
            record.latency_s = time.monotonic() - run.start
            record.price(self.config)

    async def complete(self, messages: list[Message], record: CallRecord, call: CallOptions) -> str:
        """The answer (a ProgramAnswer), for proposers. Raises like `stream`."""
        pieces = [piece async for piece in self.stream(messages, record, call, buffered=True)]
        return pieces[-1]

    async def _check_sandbox(self) -> None:
        """Refuse before asking the model when no sandbox of the configured mode works here."""
        assert self.sandbox is not None
        try:
            await asyncio.to_thread(self.sandbox.check)
        except SandboxUnavailable as e:
            raise ProgramFailed(
                f"agent '{self.name}' will not run programs: {e} "
                '(or set sandbox = "rlimits-only" on the agent to accept weaker isolation)'
            ) from None

    async def _attempts(
        self, run: _Attempts, call: CallOptions, buffered: bool
    ) -> AsyncGenerator[str, None]:
        """Ask, run, and ask again with the error shown, until a program prints an answer."""
        retries = self.config.retries if call.program_retries is None else call.program_retries
        for attempt in range(1, retries + 2):
            reply: list[str] = []
            async for piece in self._ask(run, call, buffered):
                reply.append(piece)
                if not buffered:
                    yield Reasoning(piece)
            tried = await self._try("".join(reply), attempt, call.deadline, run.start)
            run.log.append(tried.entry)
            if tried.status == "ok":
                answer = printed_answer(tried.stdout)
                run.record.response = answer
                if not buffered:
                    yield Reasoning(f"\n\nThe program printed: {answer}\n")
                yield ProgramAnswer(answer, tried.code, tried.stdout, tried.status)
                return
            failed = f"the program failed ({tried.status}): {tried.error}"
            if attempt > retries or call.deadline - time.monotonic() < 2 * MIN_RUN_S:
                raise ProgramFailed(failed)
            if not buffered:
                yield Reasoning(f"\n\nThe program failed ({tried.status}): {tried.error}\n\n")
            if call.on_retry is not None:
                call.on_retry(attempt + 1, f"program {tried.status}: {tried.error}")
            status = tried.status.replace("_", " ")
            shown = f"```python\n{tried.code}\n```" if tried.status != "not run" else "".join(reply)
            run.messages = [
                *run.messages,
                {"role": "assistant", "content": shown},
                {"role": "user", "content": RETRY.format(status=status, error=tried.error)},
            ]
            call = _hotter(call, self.sampling())

    async def _try(self, reply: str, attempt: int, deadline: float, start: float) -> _Tried:
        """The program in `reply`, run (or not run, when it is plainly no program: `problem`)."""
        code = complete_program(extract_program(reply))
        problem = program_problem(reply, code)
        if problem is not None:
            entry = {"attempt": attempt, "program": code, "status": "not run", "output": "",
                     "error": problem, "wall_s": 0.0, "mode": None}  # fmt: skip
            return _Tried(code, "not run", problem, "", entry)
        result = await self._run(code, deadline, start)
        entry = _entry(attempt, code, result)
        return _Tried(code, result.status, result.error_summary(), result.stdout, entry)

    async def _ask(
        self, run: _Attempts, call: CallOptions, buffered: bool
    ) -> AsyncGenerator[str, None]:
        """One model call for a program (Agent.stream: its own retries of transient errors);
        its tokens, attempts and time to first token are added to the program agent's record."""
        sub = self.new_record(run.record.layer, run.record.agent)
        pieces = super().stream(run.messages, sub, call, buffered=buffered)
        try:
            async for piece in pieces:
                yield piece
        finally:
            await pieces.aclose()
            rec = run.record
            rec.attempts += sub.attempts
            if rec.ttft_s is None and sub.ttft_s is not None:
                rec.ttft_s = sub.started_at - rec.started_at + sub.ttft_s
            for name in ("prompt_tokens", "completion_tokens"):
                if getattr(sub, name) is not None:
                    setattr(rec, name, (getattr(rec, name) or 0) + getattr(sub, name))

    async def _run(self, code: str, deadline: float, start: float) -> RunResult:
        """Run `code` in the sandbox, its wall limit cut to what is left before `deadline`."""
        assert self.sandbox is not None
        left = deadline - time.monotonic()
        if left < MIN_RUN_S:
            raise Timeout(f"no time left to run the program ({time.monotonic() - start:.1f}s)")
        limits: Limits = self.config.limits
        if left < limits.wall_s:
            limits = limits.model_copy(update={"wall_s": left})
        return await self.sandbox.run_python(code, limits)


def make_agent(name: str, cfg: AgentConfig) -> Agent:
    """The agent of a config: a ProgramAgent for `kind = "program"`, else a (text) Agent."""
    if cfg.kind == "program":
        base = Agent.from_config(name, cfg)
        return ProgramAgent(name, cfg, base.provider)
    return Agent.from_config(name, cfg)


__all__ = [
    "ProgramAgent",
    "ProgramAnswer",
    "ProgramFailed",
    "Reasoning",
    "complete_program",
    "extract_program",
    "make_agent",
    "printed_answer",
    "program_messages",
    "program_problem",
]
