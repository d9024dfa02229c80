"""The Mixture-of-Agents engine: proposer layers, then a final aggregator whose tokens stream.

    conversation ──> layer 1 (agents run concurrently) ──> answers_1
                 ──> layer 2 sees conversation + answers_1 (synthesis prompt) ──> answers_2
                 ...
                 ──> aggregator sees conversation + answers_L ──> streamed answer

A layer proceeds at quorum or at the deadline, and fails with LayerFailed on too few answers
(layers.py). Every call is a CallRecord; the finished run goes to a LogSink (by default the SQLite
log, see logs.py), and `on_event` sees it happen (events.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, NamedTuple

from typing_extensions import TypedDict, Unpack

from mixkit.errors import MixkitError
from mixkit.moa.agents.agent import CallRecord
from mixkit.moa.agents.program import ProgramAnswer, Reasoning, make_agent
from mixkit.moa.agents.providers.base import Message
from mixkit.moa.agents.providers.local import CORES
from mixkit.moa.answers import final_answer
from mixkit.moa.config import MoAConfig, resolve
from mixkit.moa.engine.final import FinalCall, answer_alone, stream_final
from mixkit.moa.engine.layers import LayerRun, labels, run_layer
from mixkit.moa.engine.output import OutputRun, make_spec
from mixkit.moa.engine.prompts import as_conversation, synthesis_messages
from mixkit.moa.engine.result import Answer, AnswerStream, critical_path
from mixkit.moa.engine.staircase import staircase
from mixkit.moa.engine.structured import OutputSpec
from mixkit.moa.events import Emitter, EventHandler
from mixkit.moa.gate import model as gates
from mixkit.moa.gate.plan import Plan, pick_by_vote, plan_run
from mixkit.moa.logs import LogSink, SQLiteLog

LayerCallback = Callable[[int, list[CallRecord]], None]


async def _once(text: str) -> AsyncGenerator[str, None]:
    """A final answer that is already whole (an early exit, a vote): one piece, after the
    program that printed it when a program agent's answer won (as Reasoning)."""
    if isinstance(text, ProgramAnswer):
        yield Reasoning(f"```python\n{text.program}\n```\n\nThe program printed: {text}\n")
    yield text


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
    response_format: Any  # JSON mode / a JSON schema / a pydantic model (engine/output.py)
    tools: list[dict[str, Any]] | None  # OpenAI tool definitions; the answer may call one
    tool_choice: str | dict[str, Any] | None  # auto | none | required | a named function
    output: OutputSpec | None  # all of it at once, with parallel_tool_calls, live, ...


@dataclasses.dataclass
class _Run:
    """What the steps of one run share."""

    answer: Answer
    max_tokens: int | None
    deadline_s: float
    emit: Emitter
    on_layer: LayerCallback | None
    final: FinalCall  # how the final answer's call is made


class _AnswerSampling(NamedTuple):
    """A run's overrides of the final aggregator's sampling (None: the agent's own)."""

    temperature: float | None
    top_p: float | None


class MoA:
    """A configured Mixture-of-Agents. Creating one touches no network and loads no model.

    Each finished run is written to `sink` (default: the SQLite log at `log`, a path, or
    `$MIXKIT_HOME/logs.db` when `log` is True); `log=False` writes nothing.
    """

    def __init__(
        self, config: MoAConfig, *, log: bool | str | Path = True, sink: LogSink | None = None
    ):
        self.config = config
        self.agents = {name: make_agent(name, cfg) for name, cfg in config.agents.items()}
        path = None if isinstance(log, bool) else log
        self.sink: LogSink | None = (sink or SQLiteLog(path)) if log is not False else None
        self.gate: gates.Gate | None = None
        if config.gate is not None:  # loaded and checked now: a bad gate file fails here, once
            self.gate = gates.load(config.gate.path)
            self.gate.check_agents(set(config.layers[0].agents))

    def answer_max_tokens(self, max_tokens: int | None = None) -> int:
        """The final aggregator's max_tokens in a run given `max_tokens` (the run's override)."""
        return max_tokens or self.agents[self.config.aggregator].config.max_tokens

    def _threads_per_call(self, names: list[str]) -> int | None:
        """Local agents of a layer split the core budget evenly (see providers/local.py)."""
        local = sum(self.agents[n].provider.kind == "local" for n in names)
        return max(1, CORES.total // local) if local else None

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
        response_format: Any = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        output: OutputSpec | None = None,
    ) -> AnswerStream:
        """Answer `question` (after `messages`, a prior conversation); stream the final answer.

        The keywords are those of `RunOptions`. `temperature` and `top_p` override only the
        final aggregator's sampling; proposers keep their own, because their diversity is what
        the aggregator works with. `run_id` lets a caller name the run before it starts (the
        server sends it in a header ahead of the first token). `response_format`, `tools`,
        `tool_choice` (or `output`): structured output and tool calls (engine/output.py).
        """
        conversation = as_conversation(question, messages)
        spec = make_spec(response_format, tools, tool_choice, output)
        run_id = run_id or uuid.uuid4().hex
        deadline = deadline_s or self.config.deadline_s
        answer = Answer(
            answer="",
            run_id=run_id,
            conversation_id=conversation_id or run_id,
            preset=self.config.name,
            messages=conversation,
            outcome="error",
            deadline_s=deadline,
        )
        holder = AnswerStream(
            self._generate(
                answer,
                max_tokens,
                deadline,
                on_layer,
                Emitter(run_id, on_event),
                _AnswerSampling(temperature, top_p),
                lambda: setattr(holder, "result", answer),
                OutputRun(spec, conversation) if spec is not None else None,
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
        output: OutputRun | None = None,
    ) -> AsyncGenerator[str, None]:
        """The run: proposer layers, then the final answer's pieces; fills in `answer`."""
        cfg = self.config
        answer.started_at, emit.start = time.time(), time.monotonic()
        layers = [labels(layer.agents) for layer in cfg.layers]
        emit(
            "run_start",
            data={
                "mixture": cfg.name,
                "layers": layers,
                "aggregator": cfg.aggregator,
                "deadline_s": deadline_s,
            },
        )
        final_call = FinalCall(
            answer.calls, max_tokens, cfg.retries, emit, self._threads_per_call, *answer_sampling
        )
        final_call.output = output
        run = _Run(answer, max_tokens, deadline_s, emit, on_layer, final_call)
        pieces: list[str] = []
        final: AsyncGenerator[str, None] | None = None
        try:
            final = self._final_answer(run, self._plan(answer, emit))
            async for piece in final:
                if answer.ttft_s is None:  # a program agent's reasoning counts: it is streamed
                    answer.ttft_s = time.monotonic() - emit.start
                if isinstance(piece, Reasoning):  # shown, not part of the answer
                    answer.reasoning = (answer.reasoning or "") + piece
                    emit("answer_reasoning", text=piece)
                else:
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
            if final is not None:  # closed early: the final call ends (cancelled) first
                await final.aclose()
            if output is not None:
                answer.structured, answer.tool_calls = output.trace, output.tool_calls
            self._finish(answer, pieces, emit)
            done()

    async def _final_answer(self, run: _Run, plan: Plan) -> AsyncGenerator[str, None]:
        """The final answer's pieces: one agent alone (gated), a staircase, or the proposer
        layers and then an early exit, the gate's vote or the aggregator."""
        cfg = self.config
        if plan.alone is not None:
            assert plan.decision is not None
            slots = dict(zip(labels(cfg.layers[0].agents), cfg.layers[0].agents, strict=True))
            deadline = time.monotonic() + run.deadline_s
            pieces = answer_alone(
                self.agents, slots, plan.decision, run.answer.messages, deadline, run.final
            )
        elif cfg.staircase and plan.layers and plan.combine != "vote" and not run.final.output:
            pieces = await self._staircase(run, plan)
        else:
            text, prompt = await self._proposals(run, plan)
            if text is not None:  # early exit, or the gate's vote: no aggregator call
                # (never with structured output: _proposals ends with the aggregator then)
                pieces = _once(text)
            else:
                pieces = stream_final(
                    self.agents[cfg.aggregator], prompt, time.monotonic() + run.deadline_s,
                    run.final, layer=len(plan.layers) + 1, label=cfg.aggregator,
                )  # fmt: skip
        try:
            async for piece in pieces:
                yield piece
        finally:
            await pieces.aclose()

    async def _staircase(self, run: _Run, plan: Plan) -> AsyncGenerator[str, None]:
        """Run the plan's layers but the last as usual; return the pieces of the last one and
        the aggregator as a staircase (staircase.py), sharing the cores between them."""
        cfg = self.config
        assert cfg.staircase is not None
        head = dataclasses.replace(plan, layers=plan.layers[:-1], combine="synthesize")
        text, prompt = await self._proposals(run, head)
        if text is not None:  # an earlier layer agreed: early exit
            return _once(text)
        layer = plan.layers[-1]
        threads = self._threads_per_call([*layer.agents, cfg.aggregator])
        layer_run = LayerRun(prompt, run.max_tokens, run.deadline_s, cfg.retries, threads, run.emit)
        steps = dataclasses.replace(run.final, threads=lambda _names: threads)
        return staircase(
            self.agents, len(plan.layers), layer, run.answer.messages, layer_run,
            self.agents[cfg.aggregator], steps, cfg.staircase, cfg.reference_chars,
        )  # fmt: skip

    def _plan(self, answer: Answer, emit: Emitter) -> Plan:
        """Ungated: every layer. Gated: what the gate chose for the latest user message."""
        users = [m["content"] for m in answer.messages if m["role"] == "user"]
        plan = plan_run(self.config, self.gate, users[-1])  # a tool result may come after it
        if plan.decision is not None:
            answer.gate = plan.decision.to_dict()
            emit("gate", data=answer.gate)
        return plan

    async def _proposals(self, run: _Run, plan: Plan) -> tuple[str | None, list[Message]]:
        """Run the plan's proposer layers. Return the final text when no aggregator is needed
        (early exit on agreement, or the gate's vote), else None and the aggregator's prompt."""
        cfg, answer = self.config, run.answer
        calls, prompt = answer.calls, list(answer.messages)
        output = run.final.output  # structured output: proposers see the tools; no shortcuts
        for i, layer in enumerate(plan.layers, 1):
            threads = self._threads_per_call(layer.agents)
            layer_run = LayerRun(
                prompt, run.max_tokens, run.deadline_s, cfg.retries, threads, run.emit
            )
            layer_run.constraint = output.proposer_constraint() if output else None
            chosen = plan.decision.chosen if (plan.decision and i == 1) else None
            answers, agreed = await run_layer(
                self.agents, i, layer, calls, layer_run, chosen, None if output else cfg.early_exit
            )
            if run.on_layer:
                run.on_layer(i, [c for c in calls if c.layer == i])
            if agreed is not None:
                answer.early_exit = {
                    "layer": i,
                    "agreed": final_answer(answers[agreed]) or answers[agreed][:80],
                    "answers": len(answers),
                    "skipped_layers": len(plan.layers) - i,
                }
                run.emit("early_exit", layer=i, data=answer.early_exit)
                return answers[agreed], prompt
            if i == 1 and plan.combine == "vote" and plan.decision is not None and not output:
                ok = {c.agent for c in calls if c.layer == 1 and c.outcome == "ok"}
                weights = [
                    w for c, w in zip(plan.decision.chosen, plan.weights, strict=True) if c in ok
                ]
                return answers[pick_by_vote(answers, weights)], prompt
            prompt = synthesis_messages(answer.messages, answers, cfg.reference_chars)
        return None, prompt

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
