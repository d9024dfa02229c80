"""Structured output and tools for a model that only reads and writes text (the local models).

A conversation may carry tool turns in OpenAI's shape: an assistant message with `tool_calls`,
and `role: "tool"` messages with the results. The embedded models' chat templates know nothing
of them, so `text_messages` rewrites them as text: a call as the JSON object the model is asked
to write (`{"name": ..., "arguments": {...}}`), a result as a user turn that says which call it
answers. The tool definitions go into the system message with how to call one.

`grammar(schema)` is the llama.cpp grammar (GBNF) that makes a model's decode follow a JSON
schema (llama-cpp-python's converter); every token it samples keeps the text a prefix of a
valid document, so the syntax cannot go wrong (a cut at max_tokens still can).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from mixkit.errors import ConfigError
from mixkit.moa.agents.providers.base import Message

CALL_HOWTO = (
    "You can call these functions. To call one, reply with only a JSON object "
    '{"name": <function name>, "arguments": {<arguments>}} and nothing else. '
    "Otherwise, answer the user directly."
)


def describe_tools(tools: list[dict[str, Any]]) -> str:
    """The tool definitions as text for a system prompt."""
    lines = [CALL_HOWTO, "", "Functions:"]
    for tool in tools:
        fn = tool["function"]
        params = json.dumps(fn.get("parameters") or {"type": "object"}, separators=(",", ":"))
        lines.append(f"- {fn['name']}: {fn.get('description') or ''} Parameters: {params}")
    return "\n".join(lines)


def call_text(name: str, arguments: Any) -> str:
    """A call as the JSON text a model writes (and reads back in the conversation)."""
    return json.dumps({"name": name, "arguments": arguments})


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def text_messages(messages: list[Message], tools: list[dict[str, Any]] | None) -> list[Message]:
    """`messages` with tool turns rewritten as text, and `tools` described in the system text."""
    names: dict[str, str] = {}  # tool_call id -> function name
    out: list[Message] = []
    for m in messages:
        turn: dict[str, Any] = dict(m)
        if turn.get("role") == "assistant" and turn.get("tool_calls"):
            calls = []
            for c in turn["tool_calls"]:
                fn = c.get("function", {})
                names[c.get("id", "")] = fn.get("name", "")
                calls.append(call_text(fn.get("name", ""), _arguments(fn.get("arguments"))))
            text = "\n".join([turn.get("content") or "", *calls]).strip()
            out.append({"role": "assistant", "content": text})
        elif turn.get("role") == "tool":
            call_id = turn.get("tool_call_id", "")
            text = f"Result of {names.get(call_id, 'the function')} (call {call_id}):\n{turn.get('content') or ''}"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("Result of "):
                out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + text}
            else:
                out.append({"role": "user", "content": text})
        else:
            out.append({"role": str(turn["role"]), "content": str(turn.get("content") or "")})
    if tools:
        howto = describe_tools(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{howto}"}
        else:
            out.insert(0, {"role": "system", "content": howto})
    return out


@functools.lru_cache(maxsize=64)
def _grammar(schema_json: str) -> Any:
    from llama_cpp.llama_grammar import LlamaGrammar  # lazy: llama.cpp only for local models

    try:
        return LlamaGrammar.from_json_schema(schema_json, verbose=False)
    except Exception as e:  # noqa: BLE001 - the converter raises plain exceptions
        raise ConfigError(f"this JSON schema cannot be made into a grammar: {e}") from None


def grammar(schema: dict[str, Any]) -> Any:
    """The llama.cpp grammar for `schema` (cached); ConfigError if it cannot be converted."""
    return _grammar(json.dumps(schema, sort_keys=True))
