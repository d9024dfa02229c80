"""The Mixture-of-Agents engine: proposer layers, then a final aggregator whose tokens stream.

    conversation ──> layer 1 (agents run concurrently) ──> answers_1
                 ──> layer 2 sees conversation + answers_1 (synthesis prompt) ──> answers_2
                 ...
                 ──> aggregator sees conversation + answers_L ──> streamed answer

A layer proceeds as soon as `quorum` agents have answered (the rest are cancelled), or at the
deadline with whatever answered. With fewer than `min_answers` it fails, naming each agent that
failed and why. Every call is a CallRecord; the run and its calls go to SQLite (trace.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from mixkit.errors import MixkitError, ProviderError
from mixkit.moa import trace
from mixkit.moa.agents import Agent, CallRecord
from mixkit.moa.config import LayerConfig, MoAConfig, resolve
from mixkit.moa.prompts import as_conversation, synthesis_messages
from mixkit.moa.providers.base import Message

GRACE_S = 2.0  # agents enforce the deadline themselves; this only guards against a stuck task


@dataclass
class Answer:
    """The result of one run: the answer and the trace of every call."""

    answer: str
    run_id: str
    conversation_id: str
    preset: str
    messages: list[Message]  # the conversation the run answered
    calls: list[CallRecord] = field(default_factory=list)
    wall_s: float = 0.0
    critical_path_s: float = 0.0  # sum over layers of the slowest call
    ttft_s: float | None = None  # run start -> first token of the final answer

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens or 0 for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens or 0 for c in self.calls)

    def to_dict(self) -> dict:
        """The JSON shape of `mixkit ask --json`."""
        return {
            "answer": self.answer,
            "run_id": self.run_id,
            "conversation_id": self.conversation_id,
            "preset": self.preset,
            "wall_s": self.wall_s,
            "critical_path_s": self.critical_path_s,
            "ttft_s": self.ttft_s,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "trace": [c.to_dict() for c in self.calls],
        }


class AnswerStream:
    """Async iterator over the final answer's text pieces; `.result` (an Answer) once it ends."""

    def __init__(self, pieces: AsyncIterator[str]):
        self._pieces = pieces
        self.result: Answer | None = None

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> str:
        return await self._pieces.__anext__()

    async def aclose(self) -> None:
        await self._pieces.aclose()  # type: ignore[attr-defined]

    async def collect(self) -> Answer:
        """Consume the stream; return the Answer."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result


def critical_path(calls: list[CallRecord]) -> float:
    """Sum over layers of the slowest call: the least time any engine could take."""
    slowest: dict[int, float] = {}
    for c in calls:
        slowest[c.layer] = max(slowest.get(c.layer, 0.0), c.latency_s or 0.0)
    return sum(slowest.values())


def _labels(names: list[str]) -> list[str]:
    """Agent names, with '#1', '#2' ... where a layer repeats an agent (Self-MoA)."""
    totals, seen = Counter(names), Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(f"{name}#{seen[name]}" if totals[name] > 1 else name)
    return out


class MoA:
    """A configured Mixture-of-Agents. Creating one touches no network and loads no model."""

    def __init__(self, config: MoAConfig, *, log: bool | str | Path = True):
        self.config = config
        self.agents = {name: Agent.from_config(name, cfg) for name, cfg in config.agents.items()}
        self.log_path = None if log is False else (None if log is True else Path(log))
        self.log = log is not False

    def _threads_per_call(self, names: list[str]) -> int | None:
        """Local agents of a layer split the core budget evenly (see providers/local.py)."""
        from mixkit.moa.providers.local import CORES

        local = sum(self.agents[n].provider.kind == "local" for n in names)
        return max(1, CORES.total // local) if local else None

    async def _run_layer(
        self,
        layer_no: int,
        layer: LayerConfig,
        messages: list[Message],
        calls: list[CallRecord],
        max_tokens: int | None,
        deadline_s: float,
    ) -> list[str]:
        """Run one proposer layer; return the answers in slot order."""
        n, quorum = len(layer.agents), layer.quorum or len(layer.agents)
        deadline = time.monotonic() + deadline_s
        threads = self._threads_per_call(layer.agents)
        tasks: dict[asyncio.Task, tuple[int, CallRecord]] = {}
        for slot, (name, label) in enumerate(
            zip(layer.agents, _labels(layer.agents), strict=False)
        ):
            agent = self.agents[name]
            record = agent.new_record(layer_no, label)
            calls.append(record)
            coro = agent.complete(
                messages,
                record,
                deadline=deadline,
                sampling=agent.sampling(slot, max_tokens),
                retries=self.config.retries,
                threads=threads,
            )
            tasks[asyncio.create_task(coro)] = (slot, record)
        answers: dict[int, str] = {}
        pending = set(tasks)
        try:
            while pending and len(answers) < quorum:
                timeout = max(0.0, deadline - time.monotonic()) + GRACE_S
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
                for task in done:
                    error = task.exception()
                    if error is None:
                        answers[tasks[task][0]] = task.result()
                    elif not isinstance(error, ProviderError):
                        raise error  # a config mistake or a bug, not a failed agent: never swallow it
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if len(answers) < layer.min_answers:
            failed = "; ".join(
                f"{r.agent}: {r.error or r.outcome}" for _, r in tasks.values() if r.outcome != "ok"
            )
            raise ProviderError(
                f"layer {layer_no}: {len(answers)} of {n} agents answered, {layer.min_answers} needed ({failed})"
            )
        return [answers[slot] for slot in sorted(answers)]

    def stream(
        self,
        question: str | None = None,
        *,
        messages: list[Message] | None = None,
        max_tokens: int | None = None,
        deadline_s: float | None = None,
        conversation_id: str | None = None,
        on_layer: Callable[[int, list[CallRecord]], None] | None = None,
        run_id: str | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
    ) -> AnswerStream:
        """Answer `question` (after `messages`, a prior conversation); stream the final answer.

        `max_tokens` overrides every agent's (evals compare systems at equal max_tokens).
        `on_layer(layer_no, calls)` is called as each proposer layer finishes.
        `run_id` (default: a fresh uuid4 hex) lets a caller name the run before it starts
        (the server sends it in a header ahead of the first token).
        `temperature` and `top_p` override the final aggregator's sampling (the answer the caller
        sees); proposers keep their own, because their diversity is what the aggregator works with.
        """
        conversation = as_conversation(question, messages)
        holder = AnswerStream(
            self._generate(
                conversation,
                max_tokens,
                deadline_s or self.config.deadline_s,
                conversation_id,
                on_layer,
                lambda a: setattr(holder, "result", a),
                run_id,
                {"temperature": temperature, "top_p": top_p},
            )
        )
        return holder

    async def _generate(
        self,
        conversation,
        max_tokens,
        deadline_s,
        conversation_id,
        on_layer,
        set_result,
        run_id=None,
        answer_sampling: dict | None = None,
    ) -> AsyncIterator[str]:
        cfg = self.config
        run_id = run_id or uuid.uuid4().hex
        started_at, start = time.time(), time.monotonic()
        calls: list[CallRecord] = []
        pieces: list[str] = []
        ttft: float | None = None
        outcome, error = "error", None
        try:
            prompt = list(conversation)
            for i, layer in enumerate(cfg.layers, 1):
                answers = await self._run_layer(i, layer, prompt, calls, max_tokens, deadline_s)
                if on_layer:
                    on_layer(i, [c for c in calls if c.layer == i])
                prompt = synthesis_messages(conversation, answers, cfg.reference_chars)
            aggregator = self.agents[cfg.aggregator]
            record = aggregator.new_record(len(cfg.layers) + 1, cfg.aggregator)
            calls.append(record)
            sampling = aggregator.sampling(0, max_tokens)
            overrides = {k: v for k, v in (answer_sampling or {}).items() if v is not None}
            if overrides:
                sampling = dataclasses.replace(sampling, **overrides)
            async for piece in aggregator.stream(
                prompt,
                record,
                deadline=time.monotonic() + deadline_s,
                sampling=sampling,
                retries=cfg.retries,
                threads=self._threads_per_call([cfg.aggregator]),
            ):
                if ttft is None:
                    ttft = time.monotonic() - start
                pieces.append(piece)
                yield piece
            outcome = "ok"
        except MixkitError as e:
            error = str(e)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            outcome, error = "cancelled", "the caller stopped the run"
            raise
        finally:
            answer = Answer(
                answer="".join(pieces),
                run_id=run_id,
                conversation_id=conversation_id or run_id,
                preset=cfg.name,
                messages=conversation,
                calls=calls,
                wall_s=time.monotonic() - start,
                critical_path_s=critical_path(calls),
                ttft_s=ttft,
            )
            set_result(answer)
            if self.log:
                self.write_log(answer, started_at, outcome, error)

    def write_log(self, answer: Answer, started_at: float, outcome: str, error: str | None) -> None:
        """Record a finished run and its calls in the SQLite trace. Called once per run, at its
        end; a subclass may override it to write elsewhere or later (the server does)."""
        run = {
            "id": answer.run_id,
            "conversation_id": answer.conversation_id,
            "started_at": started_at,
            "preset": answer.preset,
            "question": answer.messages[-1]["content"],
            "messages": answer.messages,
            "answer": answer.answer,
            "outcome": outcome,
            "error": error,
            "wall_s": answer.wall_s,
            "critical_path_s": answer.critical_path_s,
            "ttft_s": answer.ttft_s,
        }
        db = trace.connect(self.log_path)
        try:
            trace.record_run(db, run, answer.calls)
        finally:
            db.close()

    async def arun(self, question: str | None = None, **kwargs) -> Answer:
        """Answer without streaming (same arguments as `stream`)."""
        return await self.stream(question, **kwargs).collect()

    def run(self, question: str | None = None, **kwargs) -> Answer:
        """Synchronous `arun`."""
        return asyncio.run(self.arun(question, **kwargs))


def stream(
    question: str | None = None,
    *,
    preset: str | None = None,
    config: str | Path | MoAConfig | None = None,
    log: bool | str | Path = True,
    **kwargs,
) -> AnswerStream:
    """Stream an answer from a preset or config: `async for piece in stream("..."): ...`."""
    return MoA(resolve(preset, config), log=log).stream(question, **kwargs)


def ask(
    question: str | None = None,
    *,
    preset: str | None = None,
    config: str | Path | MoAConfig | None = None,
    log: bool | str | Path = True,
    on_token: Callable[[str], None] | None = None,
    **kwargs,
) -> Answer:
    """Ask a Mixture-of-Agents a question; return the Answer (text + trace).

    `on_token(piece)` sees the final answer as it streams. Other keyword arguments are those of
    `MoA.stream` (messages, max_tokens, deadline_s, conversation_id, on_layer).
    """

    async def go() -> Answer:
        answer_stream = stream(question, preset=preset, config=config, log=log, **kwargs)
        async for piece in answer_stream:
            if on_token:
                on_token(piece)
        assert answer_stream.result is not None
        return answer_stream.result

    return asyncio.run(go())
