"""The fake backend's structured output and tool calls (testing/fake_openai.py), so that a test
can see `response_format` and `tools` pass through a mixture to a remote-shaped agent.

    response_format json_schema   -> a small value valid for the schema (`instance`)
    response_format json_object   -> {"answer": "<words>"}
    tools + tool_choice required  -> a call of the first tool (or the named one) with arguments
                                     valid for its parameters
    the last message a tool result -> "The tool returned <its content>."

Models `jsonbad:*` answer off-schema JSON first (the count is per model name), then valid JSON: an
agent that needs its repair. `jsonnever:*` is always off-schema, and `callbad:*` first calls a
tool with arguments that are not valid JSON.
"""

from __future__ import annotations

import json
from typing import Any

Schema = dict[str, Any]


def _resolve(schema: Schema, defs: dict[str, Any]) -> Schema:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return dict(defs.get(ref.split("/")[-1], {}))
    return schema


def _number(schema: Schema, default: float) -> float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    value = default if low is None else max(default, float(low))
    return value if high is None else min(value, float(high))


def instance(schema: Any, defs: dict[str, Any] | None = None) -> Any:
    """A small value that satisfies `schema` (the usual keywords; enough for tests)."""
    if not isinstance(schema, dict):
        return None
    defs = defs if defs is not None else schema.get("$defs", {})
    schema = _resolve(schema, defs)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return instance(schema[key][0], defs)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        keys = schema.get("required") or list(props)
        return {k: instance(props.get(k, {"type": "string"}), defs) for k in keys}
    if kind == "array":
        return [instance(schema.get("items", {"type": "string"}), defs)] * max(
            1, schema.get("minItems", 1)
        )
    if kind == "string":
        return "fake" + "x" * max(0, schema.get("minLength", 0) - 4)
    if kind == "integer":
        return int(_number(schema, 7))
    if kind == "number":
        return float(_number(schema, 7.5))
    return {"boolean": True, "null": None}.get(kind)


def _off_schema(schema: Schema) -> str:
    """JSON that does not satisfy an object schema (or is not even JSON)."""
    return '{"not_what_was_asked": true}' if schema.get("required") else "[1, 2, 3]"


def reply(req: dict[str, Any], kind: str, count: int) -> tuple[str | None, list[dict] | None]:
    """(text, tool calls) when the request asks for structure or carries a tool result, else
    (None, None): the behaviour's usual words."""
    messages = req.get("messages") or [{}]
    if messages[-1].get("role") == "tool":
        return f"The tool returned {messages[-1].get('content')}.", None
    tools, choice = req.get("tools") or [], req.get("tool_choice", "auto")
    if tools and (choice == "required" or isinstance(choice, dict)):
        named = choice["function"]["name"] if isinstance(choice, dict) else None
        tool = next(t for t in tools if named in (None, t["function"]["name"]))
        args = json.dumps(instance(tool["function"].get("parameters") or {}))
        if kind == "callbad" and count == 1:
            args = args[:-1]  # cut: not JSON
        call = {"id": f"call_fake{count}", "name": tool["function"]["name"], "arguments": args}
        return None, [call]
    rf = req.get("response_format") or {}
    if rf.get("type") == "json_object":
        return json.dumps({"answer": "fake"}), None
    if rf.get("type") == "json_schema":
        schema = rf.get("json_schema", {}).get("schema", {})
        if kind == "jsonnever" or (kind == "jsonbad" and count == 1):
            return _off_schema(schema), None
        return json.dumps(instance(schema)), None
    return None, None


def call_chunks(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls as streamed deltas: id and name, then the arguments in two pieces."""
    deltas = []
    for i, c in enumerate(calls):
        fn = {"name": c["name"], "arguments": ""}
        deltas.append(
            {"tool_calls": [{"index": i, "id": c["id"], "type": "function", "function": fn}]}
        )
        half = len(c["arguments"]) // 2
        for piece in (c["arguments"][:half], c["arguments"][half:]):
            deltas.append({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    return deltas
