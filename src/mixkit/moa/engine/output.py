"""The final answer of a run with structured output or tools: constrained, validated, repaired.

The final agent (the aggregator, or the agent answering alone) is constrained: a local model
decodes under a grammar made from the schema (providers/constrained.py); a remote one is sent
`response_format`, `tools` and `tool_choice` as asked. Proposers answer freely, seeing the tools
(unless `constrain_proposers`). The answer is checked with `jsonschema` (structured.py); an
invalid one gets one repair call that shows the agent the error, then the run fails with
OutputInvalid: a caller never receives text that claims to be JSON and is not.

Streaming: with `live` and a grammar-constrained local agent, the answer's pieces go out as they
are made and the check runs at the end (a failure there, such as a cut at max_tokens, ends the
stream with the error, after its pieces); every other structured answer is held until it
validated, then sent. A tool call is always whole before it goes out (tools.py: the vote).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncGenerator
from typing import Any

from mixkit.errors import ConfigError
from mixkit.moa.agents.agent import Agent, CallRecord
from mixkit.moa.agents.providers import constrained
from mixkit.moa.agents.providers.base import Constraint, Message
from mixkit.moa.engine import tools as tl
from mixkit.moa.engine.final import FinalCall, stream_final
from mixkit.moa.engine.structured import (
    OutputInvalid,
    OutputSpec,
    OutputSpecError,
    check_answer,
    check_response_format,
    response_format_of,
)

REPAIR = (
    "Your answer above is not valid: {error}. Reply again with only the corrected JSON, "
    "nothing else."
)
CALL_ONE = "Call the function {name} now ({description}). Reply with only its arguments: a JSON object for {params}."
CALL_ANY = 'Call one of the functions now. Reply with only {"name": ..., "arguments": {...}}.'


def check_spec(spec: OutputSpec) -> None:
    """OutputSpecError naming the first field of `spec` that cannot be honoured."""
    check_response_format(spec.response_format)
    tl.check_tools(spec.tools, spec.tool_choice)


def make_spec(
    response_format: Any = None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    output: OutputSpec | None = None,
) -> OutputSpec | None:
    """The checked spec of a run from the API's keywords (a pydantic model is taken for
    response_format); None when the answer is plain text."""
    spec = dataclasses.replace(output) if output is not None else OutputSpec()
    if response_format is not None:
        spec.response_format = response_format_of(response_format)
    if tools is not None:
        spec.tools = tools
    if tool_choice is not None:
        spec.tool_choice = tool_choice
    check_spec(spec)
    return spec if spec.active else None


def repair_prompt(prompt: list[Message], text: str, error: str) -> list[Message]:
    return [
        *prompt,
        {"role": "assistant", "content": text},
        {"role": "user", "content": REPAIR.format(error=error)},
    ]


def json_howto(schema: dict[str, Any]) -> str:
    if schema == {"type": "object"}:
        return "Reply with only a JSON object."
    return f"Reply with only a JSON value for this JSON schema: {json.dumps(schema)}"


def with_instruction(prompt: list[Message], text: str) -> list[Message]:
    """`prompt` with `text` added to its system message (one is made if it has none)."""
    if prompt and prompt[0]["role"] == "system":
        return [{"role": "system", "content": f"{prompt[0]['content']}\n\n{text}"}, *prompt[1:]]
    return [{"role": "system", "content": text}, *prompt]


def local_grammar(agent: Agent, schema: dict[str, Any], param: str) -> None:
    """Make the grammar a local agent will need now, so that a schema it cannot take is a clear
    request error before any call."""
    if agent.provider.kind == "local":
        try:
            constrained.grammar(schema)
        except ConfigError as e:
            raise OutputSpecError(param, str(e)) from None


@dataclasses.dataclass
class _Call:
    """Where one final call goes: agent, prompt, deadline, the run's FinalCall, layer, label."""

    agent: Agent
    prompt: list[Message]
    deadline: float
    run: FinalCall
    layer: int
    label: str

    @property
    def local(self) -> bool:
        return self.agent.provider.kind == "local"

    def stream(
        self, c: Constraint, prompt: list[Message] | None = None, suffix: str = ""
    ) -> AsyncGenerator[str, None]:
        run = dataclasses.replace(self.run, output=None, constraint=c)
        return stream_final(
            self.agent, prompt or self.prompt, self.deadline, run,
            layer=self.layer, label=self.label + suffix,
        )  # fmt: skip

    async def text(
        self, c: Constraint, prompt: list[Message] | None = None, suffix: str = ""
    ) -> str:
        return "".join([piece async for piece in self.stream(c, prompt, suffix)])


class OutputRun:
    """One run's structured output: it makes the final answer and keeps its trace."""

    def __init__(self, spec: OutputSpec, conversation: list[Message]):
        self.spec = spec
        # auto, right after tool results: the mixture answers from them (see `_with_tools`)
        self.answer_results = spec.tool_choice == "auto" and conversation[-1]["role"] == "tool"
        self.trace: dict[str, Any] = {**spec.to_dict(), "validated": None, "repairs": 0}
        self.trace.update(errors=[], votes=None, decision=None, tool_calls=None)
        self.tool_calls: list[dict[str, Any]] | None = None

    def proposer_constraint(self) -> Constraint | None:
        """What proposers are given: the tools (to propose a call), and the schema when
        `constrain_proposers`. One object serves both kinds (a local model reads schema and
        tools, a remote one gets pass_through)."""
        spec, c = self.spec, Constraint()
        if spec.constrain_proposers and spec.schema is not None:
            c.schema, c.pass_through["response_format"] = spec.schema, spec.response_format
        if spec.calls_tools and not self.answer_results:
            c.tools = spec.tools
            c.pass_through.update(self._remote_tools(spec.tool_choice))
        elif spec.tools:
            c.pass_through.update(self._remote_tools("none"))
        return c if c.schema is not None or c.tools or c.pass_through else None

    def _remote_tools(self, choice: Any) -> dict[str, Any]:
        if not self.spec.tools:
            return {}
        return {
            "tools": self.spec.tools,
            "tool_choice": choice,
            "parallel_tool_calls": self.spec.parallel_tool_calls,
        }

    async def final(
        self,
        agent: Agent,
        prompt: list[Message],
        deadline: float,
        run: FinalCall,
        *,
        layer: int,
        label: str,
    ) -> AsyncGenerator[str, None]:
        """The final answer's pieces (none when it is a tool call: see `tool_calls`)."""
        call = _Call(agent, prompt, deadline, run, layer, label)
        if not self.spec.calls_tools:
            pieces = self._answer(call)
        else:
            proposals = [c.response for c in run.calls if _proposal(c, layer)]
            pieces = self._with_tools(call, proposals)
        try:
            async for piece in pieces:
                yield piece
        finally:
            await pieces.aclose()

    async def _with_tools(self, call: _Call, proposals: list[str]) -> AsyncGenerator[str, None]:
        spec = self.spec
        assert spec.tools is not None
        if self.answer_results:  # small models tend to call again and again: answer instead
            choice = tl.ANSWER
        elif proposals:
            choice, votes = tl.vote(proposals, spec.tools, spec.tool_choice)
            self.trace["votes"] = votes
        elif (named := tl.forced_name(spec.tool_choice)) is not None:
            choice = named
        else:
            choice = tl.ANY if spec.tool_choice == "required" else "(agent)"
        self.trace["decision"] = choice
        if choice == tl.ANSWER:
            pieces = self._answer(call)
        elif choice == "(agent)":  # auto, no proposals: the agent itself calls or answers
            pieces = self._call_or_answer(call)
        else:
            await self._call(call, choice)
            return
        async for piece in pieces:
            yield piece

    async def _call(self, call: _Call, choice: str) -> None:
        """The final agent writes one call of `choice` (ANY: of a function it picks)."""
        tools = self.spec.tools
        assert tools is not None
        remote: Any  # the tool_choice a remote agent is sent
        if choice == tl.ANY:
            schema, forced, remote = tl.any_call_schema(tools), None, "required"
            prompt = with_instruction(call.prompt, CALL_ANY)
        else:
            fn = tl.by_name(tools)[choice]["function"]
            schema, forced = tl.parameters(tl.by_name(tools)[choice]), choice
            remote = {"type": "function", "function": {"name": choice}}
            what = CALL_ONE.format(
                name=choice, description=fn.get("description") or "", params=schema
            )
            prompt = with_instruction(call.prompt, what)
        local_grammar(call.agent, schema, "tools")
        c = Constraint(schema=schema, tools=tools if choice == tl.ANY else None)
        c.pass_through = self._remote_tools(remote)
        text = await call.text(c, prompt)
        await self._check_calls(call, c, prompt, text, forced if call.local else None)

    async def _check_calls(
        self, call: _Call, c: Constraint, prompt: list[Message], text: str, forced: str | None
    ) -> None:
        """Validate the calls in `text`; one repair; then `tool_calls`, or OutputInvalid."""
        tools = self.spec.tools
        assert tools is not None
        names = set(tl.by_name(tools))
        for attempt in range(2):
            calls = tl.read_calls(text, names, forced)
            error = tl.check_calls(calls, tools) if calls else "the answer calls no function"
            if error is None:
                break
            self.trace["errors"].append(error)
            if attempt == 0:
                self.trace["repairs"] += 1
                text = await call.text(c, repair_prompt(prompt, text, error), "@repair")
        self.trace["validated"] = error is None
        if error is not None or calls is None:
            raise OutputInvalid(f"the tool call is not valid after one repair: {error}")
        calls = calls if self.spec.parallel_tool_calls else calls[:1]
        self.tool_calls = self.trace["tool_calls"] = tl.openai_calls(calls)

    async def _call_or_answer(self, call: _Call) -> AsyncGenerator[str, None]:
        """tool_choice auto and no proposals: the agent sees the tools and calls one or answers
        (held until whole: it may turn out to be a call)."""
        c = Constraint(tools=self.spec.tools, pass_through=self._remote_tools("auto"))
        text = await call.text(c)
        if tl.read_calls(text, set(self.spec.tool_names())) is not None:
            self.trace["decision"] = "call"
            await self._check_calls(call, c, call.prompt, text, None)
            return
        self.trace["decision"] = tl.ANSWER
        pieces = self._answer(call, first=text)
        async for piece in pieces:
            yield piece

    async def _answer(self, call: _Call, first: str | None = None) -> AsyncGenerator[str, None]:
        """The answer as text: free (tools withheld), or JSON valid for the schema."""
        schema = self.spec.schema
        c = Constraint(schema=schema, pass_through=self._remote_tools("none"))
        if schema is None:  # text: as it comes
            if first is not None:
                yield first
                return
            async for piece in call.stream(c):
                yield piece
            return
        c.pass_through["response_format"] = self.spec.response_format
        local_grammar(call.agent, schema, "response_format.json_schema.schema")
        if call.local:  # a remote agent is told by its API; a local one reads the schema
            call = dataclasses.replace(
                call, prompt=with_instruction(call.prompt, json_howto(schema))
            )
        if first is None and self.spec.live and call.local:  # grammar-constrained: live
            pieces: list[str] = []
            async for piece in call.stream(c):
                pieces.append(piece)
                yield piece
            self._validated(check_answer("".join(pieces), schema)[2], repaired=False)
            return
        text = first if first is not None else await call.text(c)
        text, _, error = check_answer(text, schema)
        if error is not None:
            self.trace["errors"].append(error)
            self.trace["repairs"] += 1
            repaired = await call.text(c, repair_prompt(call.prompt, text, error), "@repair")
            text, _, error = check_answer(repaired, schema)
        self._validated(error, repaired=True)
        yield text

    def _validated(self, error: str | None, *, repaired: bool) -> None:
        """Record the final check; OutputInvalid when it failed."""
        self.trace["validated"] = error is None
        if error is None:
            return
        if not self.trace["errors"] or self.trace["errors"][-1] != error:
            self.trace["errors"].append(error)
        after = " after one repair" if repaired else " (streamed under a grammar, not repairable)"
        raise OutputInvalid(f"the answer is not valid for the requested schema{after}: {error}")


def _proposal(record: CallRecord, layer: int) -> bool:
    return record.layer == layer - 1 and record.outcome == "ok"
