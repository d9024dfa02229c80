"""The program agent (`kind = "program"`): its model writes a Python program, the program runs in a
sandbox (mixkit.sandbox), and the agent answers with what the program printed.

    ask the model (PROGRAM_SYSTEM + the task) ──> reply ──> extract_program ──> complete_program
        ──> Sandbox.run_python ──> ok: printed_answer(stdout), e.g. "-7.0\\n" -> "-7"
                                └─> error / timeout / no output: show the model the program and
                                    the error, ask again (`retries` times), else ProgramFailed

Streamed (the final answer), the model's reply arrives first as `Reasoning` pieces, then the answer;
collected (a proposer), the answer is one `ProgramAnswer`: a str (the answer) that also carries
the program, its output and status, for votes (answers.final_answer) and the synthesis prompt
(engine/prompts.py). Every attempt is recorded in `CallRecord.programs`.
"""

from __future__ import annotations

import ast
import asyncio
import re
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from mixkit.errors import ProviderError, Timeout
from mixkit.moa.agents.agent import Agent, CallOptions, CallRecord
from mixkit.moa.agents.providers.base import Message
from mixkit.moa.answers import final_answer, normalize_answer
from mixkit.sandbox import Limits, RunResult, Sandbox, SandboxUnavailable

PROGRAM_SYSTEM = (
    "You solve tasks by writing Python. Reply with one complete Python 3 program in a ```python "
    "code block. The program computes the answer and prints only the final answer (the value "
    "alone, no words) with print(). It reads no input: write the task's data into the program."
)
# The task goes in quotes, as data: asked plainly ("Task: ... Write a program"), the 0.5B coder
# followed a task's own "end your reply with 'Answer: X'" and answered instead of writing a program
# (chain_sum, 8 items: 14 of 15 programs printed nothing; quoted, 6 items: 6 of 6 ran and were right)
ASK = (
    "Write a complete Python program that computes the answer to the task below and prints only "
    'the final answer.\n\nTask:\n"""\n{task}\n"""\n\nReply with the program in a ```python code block.'
)
RETRY = (
    "The program failed ({status}):\n{error}\n\nFix it. Reply with the complete corrected "
    "program in a ```python code block; it must print only the final answer."
)
MIN_RUN_S = 0.5  # a program is not started with less time than this left before the deadline
OUTPUT_CHARS = 2000  # program output kept in the run log, per attempt

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_ANSWER_PREFIX = re.compile(r"^(?:final\s+)?answer\s*(?:is)?\s*[:=]\s*", re.IGNORECASE)


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


def program_messages(conversation: list[Message]) -> list[Message]:
    """The conversation as a request for a program: PROGRAM_SYSTEM (+ the caller's system text)
    first, the latest user message quoted inside ASK."""
    system = [m["content"] for m in conversation if m["role"] == "system"]
    turns = [dict(m) for m in conversation if m["role"] != "system"]
    users = [i for i, m in enumerate(turns) if m["role"] == "user"]
    if users:
        last = turns[users[-1]]
        last["content"] = ASK.format(task=last["content"].strip())
    return [{"role": "system", "content": "\n\n".join([PROGRAM_SYSTEM, *system])}, *turns]


def extract_program(reply: str) -> str:
    """The program in a model's reply: the longest ```python block (else the longest unlabelled
    one; a block cut by max_tokens counts), else the reply itself."""
    blocks = _FENCE.findall(reply)
    for wanted in (("python", "py", "python3"), ("",)):
        found = [body for lang, body in blocks if lang.lower() in wanted and body.strip()]
        if found:
            return max(found, key=len).strip("\n")
    return reply.strip()


def _prints(tree: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        for n in ast.walk(tree)
    )


def complete_program(code: str) -> str:
    """Fix what small models often leave out, so that a right program prints its answer: a last
    bare expression is printed (as in a REPL); a program that prints nothing prints its last
    assigned name, or calls and prints its last function when it only defines functions. Code
    that does not parse is returned as it is (the sandbox reports the SyntaxError)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    if not body:
        return code
    last, prints = body[-1], _prints(tree)
    if isinstance(last, ast.Expr) and not (
        isinstance(last.value, ast.Call) and (prints or _is_print(last.value))
    ):
        lines = code.splitlines()
        start, end = last.lineno - 1, (last.end_lineno or last.lineno)
        expr = "\n".join(lines[start:end])
        return "\n".join([*lines[:start], f"print({expr.strip()})", *lines[end:]])
    if prints:
        return code
    if isinstance(last, ast.Assign) and len(last.targets) == 1:
        target = last.targets[0]
        if isinstance(target, ast.Name):
            return f"{code.rstrip()}\nprint({target.id})\n"
    functions = [s for s in body if isinstance(s, ast.FunctionDef)]
    if functions and len(functions) == len(body) and not functions[-1].args.args:
        return f"{code.rstrip()}\nprint({functions[-1].name}())\n"
    return code


def _is_print(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Name) and call.func.id == "print"


def printed_answer(stdout: str) -> str:
    """The answer a program printed: its last non-empty line, without an 'Answer:' prefix,
    numbers in their plain form (-7.0 -> -7, 1e3 -> 1000)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        return ""
    text = _ANSWER_PREFIX.sub("", lines[-1]).strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if value.is_integer() and abs(value) < 1e15 and "inf" not in text.lower():
        return str(int(value))
    return text


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
        retries = self.config.retries
        for attempt in range(1, retries + 2):
            reply: list[str] = []
            async for piece in self._ask(run, call, buffered):
                reply.append(piece)
                if not buffered:
                    yield Reasoning(piece)
            code = complete_program(extract_program("".join(reply)))
            result = await self._run(code, call.deadline, run.start)
            run.log.append(_entry(attempt, code, result))
            if result.ok:
                answer = printed_answer(result.stdout)
                run.record.response = answer
                if not buffered:
                    yield Reasoning(f"\n\nThe program printed: {answer}\n")
                yield ProgramAnswer(answer, code, result.stdout, result.status)
                return
            error = result.error_summary()
            if attempt > retries or call.deadline - time.monotonic() < 2 * MIN_RUN_S:
                raise ProgramFailed(f"the program failed ({result.status}): {error}")
            if not buffered:
                yield Reasoning(f"\n\nThe program failed ({result.status}): {error}\n\n")
            if call.on_retry is not None:
                call.on_retry(attempt + 1, f"program {result.status}: {error}")
            status = result.status.replace("_", " ")
            run.messages = [
                *run.messages,
                {"role": "assistant", "content": f"```python\n{code}\n```"},
                {"role": "user", "content": RETRY.format(status=status, error=error)},
            ]

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


def make_agent(name: str, cfg: Any) -> Agent:
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
]
