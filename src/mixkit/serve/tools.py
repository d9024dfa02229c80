"""The structured-output and tool parts of a chat request: checked, turned into the engine's
OutputSpec, and a finished run's tool calls sent as stream deltas.

What cannot be honoured is a 400 naming the field (OpenAI's `param`): a malformed or
unsatisfiable schema (`response_format.json_schema.schema...`), a tool whose parameters are not
a JSON schema (`tools[0].function.parameters...`), a `tool` message answering no earlier call
(`messages[3].tool_call_id`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mixkit.moa import OutputSpec, OutputSpecError, check_spec
from mixkit.serve.errors import APIError

if TYPE_CHECKING:  # the types only: schemas.py imports this module
    from mixkit.serve.schemas import ChatCompletionRequest, ChatMessage

ARGUMENT_PIECE = 32  # characters of a call's arguments per streamed delta


def output_spec(req: ChatCompletionRequest) -> OutputSpec | None:
    """The run's structured output, or None for a plain-text answer."""
    spec = OutputSpec(
        response_format=req.response_format,
        tools=req.tools,
        tool_choice=req.tool_choice or "auto",
        parallel_tool_calls=req.parallel_tool_calls,
        constrain_proposers=req.constrain_proposers,
        live=req.stream,  # a grammar-constrained local answer streams as it is made
    )
    return spec if spec.active else None


def check_request(req: ChatCompletionRequest) -> None:
    """APIError(400) naming the first field the engine cannot honour."""
    spec = OutputSpec(
        response_format=req.response_format, tools=req.tools, tool_choice=req.tool_choice or "auto"
    )
    try:
        check_spec(spec)
    except OutputSpecError as e:
        raise APIError(400, str(e), param=e.param, code="invalid_value") from None
    check_messages(req.messages)


def _bad(i: int, field: str, message: str) -> APIError:
    param = f"messages[{i}].{field}"
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


def _check_call(i: int, j: int, call: Any) -> str:
    """The id of a well-formed tool call of an assistant message, else APIError."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not (
        isinstance(fn, dict)
        and isinstance(call.get("id"), str)
        and call["id"]
        and isinstance(fn.get("name"), str)
        and isinstance(fn.get("arguments"), str)
    ):
        raise _bad(
            i,
            f"tool_calls[{j}]",
            "must be {'id': ..., 'type': 'function', 'function': {'name': ..., 'arguments': '<JSON>'}}",
        )
    return str(call["id"])


def check_messages(messages: list[ChatMessage]) -> None:
    """Tool turns in order: calls well-formed, each `tool` message answering an earlier call."""
    ids: set[str] = set()
    for i, m in enumerate(messages):
        if m.tool_calls and m.role != "assistant":
            raise _bad(i, "tool_calls", "only an assistant message can carry tool calls")
        if m.role == "assistant":
            if m.content is None and not m.tool_calls:
                raise _bad(i, "content", "an assistant message needs content or tool_calls")
            ids |= {_check_call(i, j, c) for j, c in enumerate(m.tool_calls or [])}
        elif m.content is None:
            raise _bad(i, "content", "missing")
        if m.role == "tool":
            if m.tool_call_id is None:
                raise _bad(i, "tool_call_id", "missing: say which tool call this answers")
            if m.tool_call_id not in ids:
                raise _bad(
                    i,
                    "tool_call_id",
                    f"'{m.tool_call_id}' answers no tool call of an earlier assistant message",
                )
    if messages[-1].role not in ("user", "tool"):
        raise _bad(
            len(messages) - 1, "role", "the last message must come from the user (or a tool)"
        )


def tool_call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A finished run's tool calls as stream deltas, the way OpenAI streams them: per call, its
    id and name first, then its arguments in pieces."""
    deltas = []
    for i, call in enumerate(calls):
        fn = call["function"]
        head = {"index": i, "id": call["id"], "type": "function"}
        deltas.append({"tool_calls": [{**head, "function": {"name": fn["name"], "arguments": ""}}]})
        args = fn["arguments"]
        for k in range(0, len(args), ARGUMENT_PIECE):
            piece = args[k : k + ARGUMENT_PIECE]
            deltas.append({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    return deltas
