"""The Mixture-of-Agents engine: proposer layers, then a final aggregator whose tokens stream.

    conversation ──> layer 1 (agents run concurrently) ──> answers_1
                 ──> layer 2 sees conversation + answers_1 (synthesis prompt) ──> answers_2
                 ...
                 ──> aggregator sees conversation + answers_L ──> streamed answer

A layer proceeds as soon as `quorum` agents have answered (the rest are cancelled), or at the
deadline with whatever answered. With fewer than `min_answers` it fails with LayerFailed, naming
each agent that failed and why. Every call is a CallRecord; the finished run goes to a LogSink
(by default the SQLite log, see logs.py), and `on_event` sees it happen (events.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import NamedTuple

from typing_extensions import TypedDict, Unpack

from mixkit.errors import LayerFailed, MixkitError, ProviderError, Timeout
from mixkit.moa.agents import Agent, CallRecord
from mixkit.moa.answer import Answer, AnswerStream, critical_path
from mixkit.moa.config import LayerConfig, MoAConfig, resolve
from mixkit.moa.events import Emitter, EventHandler
from mixkit.moa.logs import LogSink, SQLiteLog
from mixkit.moa.prompts import as_conversation, synthesis_messages
from mixkit.moa.providers.base import Message, Sampling
from mixkit.moa.providers.local import CORES

GRACE_S = 2.0  # agents enforce the deadline themselves; this only guards against a stuck task

LayerCallback = Callable[[int, list[CallRecord]], None]


class RunOptions(TypedDict, total=False):
    """The keywords of a run, shared by `MoA.stream / arun / run` and `moa.ask / moa.stream`."""

    messages: list[Message] | None  # the conversation before `question`
    max_tokens: int | None  # overrides every agent's (evals compare systems at equal max_tokens)
    deadline_s: float | None  # per call; default the config's
    conversation_id: str | None  # continue this conversation (default: a new one, = run_id)
    run_id: str | None  # name the run before it starts (default: a fresh uuid4 hex)
    temperature: float | None  # the final aggregator's sampling (the answer the caller sees)
    top_p: float | None
    on_layer: LayerCallback | None  # on_layer(layer_no, calls) as each proposer layer ends
    on_event: EventHandler | None  # every RunEvent of the run (events.py)


class _AnswerSampling(NamedTuple):
    """A run's overrides of the final aggregator's sampling (None: the agent's own)."""

    temperature: float | None
    top_p: float | None


def _labels(names: list[str]) -> list[str]:
    """Agent names, with '#1', '#2' ... where a layer repeats an agent (Self-MoA)."""
    totals, seen = Counter(names), Counter[str]()
    out = []
    for name in names:
        seen[name] += 1
        out.append(f"{name}#{seen[name]}" if totals[name] > 1 else name)
    return out


def _failed(records: list[CallRecord]) -> str:
    return "; ".join(f"{r.agent}: {r.error or r.outcome}" for r in records)


class MoA:
    """A configured Mixture-of-Agents. Creating one touches no network and loads no model.

    Each finished run is written to `sink` (default: the SQLite log at `log`, a path, or
    `$MIXKIT_HOME/logs.db` when `log` is True); `log=False` writes nothing.
    """

    def __init__(
        self, config: MoAConfig, *, log: bool | str | Path = True, sink: LogSink | None = None
    ):
        self.config = config
        self.agents = {name: Agent.from_config(name, cfg) for name, cfg in config.agents.items()}
        path = None if isinstance(log, bool) else log
        self.sink: LogSink | None = (sink or SQLiteLog(path)) if log is not False else None

    def answer_max_tokens(self, max_tokens: int | None = None) -> int:
        """The final aggregator's max_tokens in a run given `max_tokens` (the run's override)."""
        return max_tokens or self.agents[self.config.aggregator].config.max_tokens

    def _threads_per_call(self, names: list[str]) -> int | None:
        """Local agents of a layer split the core budget evenly (see providers/local.py)."""
        local = sum(self.agents[n].provider.kind == "local" for n in names)
        return max(1, CORES.total // local) if local else None

    async def _call(
        self,
        agent: Agent,
        messages: list[Message],
        record: CallRecord,
        emit: Emitter,
        *,
        deadline: float,
        sampling: Sampling,
        threads: int | None,
    ) -> str:
        """One proposer call, framed by its call_start / call_end events."""
        emit.call_start(record)
        on_piece, on_retry = emit.call_hooks(record)
        try:
            return await agent.complete(
                messages,
                record,
                deadline=deadline,
                sampling=sampling,
                retries=self.config.retries,
                threads=threads,
                on_piece=on_piece,
                on_retry=on_retry,
            )
        finally:
            emit.call_end(record)

    async def _run_layer(
        self,
        layer_no: int,
        layer: LayerConfig,
        messages: list[Message],
        calls: list[CallRecord],
        max_tokens: int | None,
        deadline_s: float,
        emit: Emitter,
    ) -> list[str]:
        """Run one proposer layer; return the answers in slot order."""
        n, quorum = len(layer.agents), layer.quorum or len(layer.agents)
        deadline = time.monotonic() + deadline_s
        threads = self._threads_per_call(layer.agents)
        tasks: dict[asyncio.Task[str], tuple[int, CallRecord]] = {}
        for slot, (name, label) in enumerate(zip(layer.agents, _labels(layer.agents), strict=True)):
            agent = self.agents[name]
            record = agent.new_record(layer_no, label)
            calls.append(record)
            sampling = agent.sampling(slot, max_tokens)
            coro = self._call(
                agent, messages, record, emit, deadline=deadline, sampling=sampling, threads=threads
            )
            tasks[asyncio.create_task(coro)] = (slot, record)
        answers: dict[int, str] = {}
        timed_out: set[int] = set()  # slots that ran out of time
        pending = set(tasks)
        try:
            while pending and len(answers) < quorum:
                timeout = max(0.0, deadline - time.monotonic()) + GRACE_S
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    timed_out |= {tasks[t][0] for t in pending}
                    break
                for task in done:
                    error = task.exception()
                    if error is None:
                        answers[tasks[task][0]] = task.result()
                    elif not isinstance(error, ProviderError):
                        raise error  # a config mistake or a bug, not a failed agent: never swallow it
                    elif isinstance(error, Timeout):
                        timed_out.add(tasks[task][0])
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        records = [r for _, r in tasks.values()]
        emit.layer_end(layer_no, len(answers), n)
        if len(answers) < layer.min_answers:
            failed = [r for slot, r in tasks.values() if slot not in answers]
            raise LayerFailed(
                f"layer {layer_no}: {len(answers)} of {n} agents answered, "
                f"{layer.min_answers} needed ({_failed(failed)})",
                layer=layer_no,
                calls=[r for r in records if r.outcome != "ok"],
                deadline_expired=all(
                    slot in timed_out for slot, _ in tasks.values() if slot not in answers
                ),
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
        run_id: str | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        on_layer: LayerCallback | None = None,
        on_event: EventHandler | None = None,
    ) -> AnswerStream:
        """Answer `question` (after `messages`, a prior conversation); stream the final answer.

        The keywords are those of `RunOptions`. `temperature` and `top_p` override only the
        final aggregator's sampling; proposers keep their own, because their diversity is what
        the aggregator works with. `run_id` lets a caller name the run before it starts (the
        server sends it in a header ahead of the first token).
        """
        conversation = as_conversation(question, messages)
        run_id = run_id or uuid.uuid4().hex
        answer = Answer(
            answer="",
            run_id=run_id,
            conversation_id=conversation_id or run_id,
            preset=self.config.name,
            messages=conversation,
            outcome="error",
        )
        holder = AnswerStream(
            self._generate(
                answer,
                max_tokens,
                deadline_s or self.config.deadline_s,
                on_layer,
                Emitter(run_id, on_event),
                _AnswerSampling(temperature, top_p),
                lambda: setattr(holder, "result", answer),
            )
        )
        return holder

    async def _generate(
        self,
        answer: Answer,
        max_tokens: int | None,
        deadline_s: float,
        on_layer: LayerCallback | None,
        emit: Emitter,
        answer_sampling: _AnswerSampling,
        done: Callable[[], None],
    ) -> AsyncGenerator[str, None]:
        """The run: proposer layers, then the aggregator's pieces; fills in `answer` as it goes."""
        cfg, calls = self.config, answer.calls
        answer.started_at, emit.start = time.time(), time.monotonic()
        layers = [_labels(layer.agents) for layer in cfg.layers]
        emit(
            "run_start",
            data={
                "mixture": cfg.name,
                "layers": layers,
                "aggregator": cfg.aggregator,
                "deadline_s": deadline_s,
            },
        )
        pieces: list[str] = []
        final: AsyncGenerator[str, None] | None = None
        try:
            prompt = list(answer.messages)
            for i, layer in enumerate(cfg.layers, 1):
                answers = await self._run_layer(
                    i, layer, prompt, calls, max_tokens, deadline_s, emit
                )
                if on_layer:
                    on_layer(i, [c for c in calls if c.layer == i])
                prompt = synthesis_messages(answer.messages, answers, cfg.reference_chars)
            final = self._aggregate(prompt, calls, max_tokens, deadline_s, emit, answer_sampling)
            async for piece in final:
                if answer.ttft_s is None:
                    answer.ttft_s = time.monotonic() - emit.start
                pieces.append(piece)
                emit("answer_token", text=piece)
                yield piece
            answer.outcome = "ok"
        except MixkitError as e:
            answer.error = str(e)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            answer.outcome, answer.error = "cancelled", "the caller stopped the run"
            raise
        finally:
            if final is not None:  # closed early: the aggregator's call ends (cancelled) first
                await final.aclose()
            self._finish(answer, pieces, emit)
            done()

    async def _aggregate(
        self,
        prompt: list[Message],
        calls: list[CallRecord],
        max_tokens: int | None,
        deadline_s: float,
        emit: Emitter,
        answer_sampling: _AnswerSampling,
    ) -> AsyncGenerator[str, None]:
        """The final aggregator's pieces, as it makes them (its layer is the last one)."""
        cfg = self.config
        aggregator = self.agents[cfg.aggregator]
        record = aggregator.new_record(len(cfg.layers) + 1, cfg.aggregator)
        calls.append(record)
        sampling = aggregator.sampling(0, max_tokens)
        if answer_sampling.temperature is not None:
            sampling.temperature = answer_sampling.temperature
        if answer_sampling.top_p is not None:
            sampling.top_p = answer_sampling.top_p
        emit.call_start(record)
        on_piece, on_retry = emit.call_hooks(record)
        pieces = aggregator.stream(
            prompt,
            record,
            deadline=time.monotonic() + deadline_s,
            sampling=sampling,
            retries=cfg.retries,
            threads=self._threads_per_call([cfg.aggregator]),
            on_piece=on_piece,
            on_retry=on_retry,
        )
        try:
            async for piece in pieces:
                yield piece
        except ProviderError as e:
            raise LayerFailed(
                f"the aggregator failed: {record.agent} (layer {record.layer}): {record.error}",
                layer=record.layer,
                calls=[record],
                deadline_expired=isinstance(e, Timeout),
            ) from e
        finally:
            await pieces.aclose()
            emit.call_end(record)
            emit.layer_end(record.layer, int(record.outcome == "ok"), 1)

    def _finish(self, answer: Answer, pieces: list[str], emit: Emitter) -> None:
        """Complete the Answer, hand it to the log sink, and emit run_end."""
        answer.answer = "".join(pieces)
        answer.wall_s = time.monotonic() - emit.start
        answer.critical_path_s = critical_path(answer.calls)
        if self.sink is not None:
            self.sink.write(answer)
        emit(
            "run_end",
            data={
                "outcome": answer.outcome,
                "error": answer.error,
                "wall_s": answer.wall_s,
                "critical_path_s": answer.critical_path_s,
                "ttft_s": answer.ttft_s,
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
            },
        )

    async def arun(self, question: str | None = None, **options: Unpack[RunOptions]) -> Answer:
        """Answer without streaming (the keywords of `stream`)."""
        return await self.stream(question, **options).collect()

    def run(self, question: str | None = None, **options: Unpack[RunOptions]) -> Answer:
        """Synchronous `arun`."""
        return asyncio.run(self.arun(question, **options))


def stream(
    question: str | None = None,
    *,
    preset: str | None = None,
    config: str | Path | MoAConfig | None = None,
    log: bool | str | Path = True,
    sink: LogSink | None = None,
    **options: Unpack[RunOptions],
) -> AnswerStream:
    """Stream an answer from a preset or config: `async for piece in stream("..."): ...`.

    The keywords after `sink` are those of `MoA.stream` (`RunOptions`)."""
    return MoA(resolve(preset, config), log=log, sink=sink).stream(question, **options)


def ask(
    question: str | None = None,
    *,
    preset: str | None = None,
    config: str | Path | MoAConfig | None = None,
    log: bool | str | Path = True,
    sink: LogSink | None = None,
    on_token: Callable[[str], None] | None = None,
    **options: Unpack[RunOptions],
) -> Answer:
    """Ask a Mixture-of-Agents a question; return the Answer (text + trace).

    `on_token(piece)` sees the final answer as it streams. The other keywords are those of
    `MoA.stream` (`RunOptions`: messages, max_tokens, deadline_s, conversation_id, run_id,
    temperature, top_p, on_layer, on_event).
    """

    async def go() -> Answer:
        answer_stream = stream(
            question, preset=preset, config=config, log=log, sink=sink, **options
        )
        async for piece in answer_stream:
            if on_token:
                on_token(piece)
        assert answer_stream.result is not None
        return answer_stream.result

    return asyncio.run(go())
