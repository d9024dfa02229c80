"""Structured output and tools for a model that only reads and writes text (the local models).

A conversation may carry tool turns in OpenAI's shape: an assistant message with `tool_calls`,
and `role: "tool"` messages with the results. The embedded models' chat templates know nothing
of them, so `text_messages` rewrites them as text: each call and its result as a note on the
user's message. The tool definitions go into the system message with how to call one (the
JSON object `{"name": ..., "arguments": {...}}`).

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


# Tried on Qwen-0.5B at T=0.2, 12 seeds, after an add tool returned: "Answer using this result."
# got the number stated 10 times (twice it wrote code to call the tool instead); this, 12 times.
RESULT_NOTE = "Answer the question in a sentence that states this result."


def signature(name: str, params: dict[str, Any]) -> str:
    """`add(a: integer, b: integer)` for a flat object schema, else the name and the schema as JSON
    (the 0.5B models copied a JSON schema shown to them into their arguments)."""
    props = params.get("properties") or {}
    if all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in props.values()):
        required = set(params.get("required") or [])
        args = [f"{k}: {p['type']}" + ("" if k in required else "?") for k, p in props.items()]
        return f"{name}({', '.join(args)})"
    return f"{name}, parameters (JSON schema): {json.dumps(params, separators=(',', ':'))}"


def describe_tools(tools: list[dict[str, Any]]) -> str:
    """The tool definitions as text for a system prompt."""
    lines = [CALL_HOWTO, "", "Functions:"]
    for tool in tools:
        fn = tool["function"]
        params = fn.get("parameters") or {"type": "object"}
        lines.append(
            f"- {signature(fn['name'], params)}: {fn.get('description') or ''}".rstrip(": ")
        )
    return "\n".join(lines)


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def text_messages(messages: list[Message], tools: list[dict[str, Any]] | None) -> list[Message]:
    """`messages` with tool turns rewritten as text, and `tools` described in the system text.

    Each call and its result become a note on the user's message they answer ("The tool add was
    called with {...} and returned: 3."), and a conversation that ends with results asks for the
    answer: tried here, the 0.5B models used a result given this way, and echoed or repeated
    the call when it came as separate assistant and user turns."""
    calls: dict[str, str] = {}  # tool_call id -> "add with {...}"
    out: list[Message] = []
    for m in messages:
        turn: dict[str, Any] = dict(m)
        if turn.get("role") == "assistant" and turn.get("tool_calls"):
            for c in turn["tool_calls"]:
                fn = c.get("function", {})
                args = json.dumps(_arguments(fn.get("arguments")))
                calls[c.get("id", "")] = f"{fn.get('name', '')} was called with {args}"
        elif turn.get("role") == "tool":
            what = calls.get(turn.get("tool_call_id", ""), "a tool was called and")
            note = f"The tool {what} and returned: {turn.get('content') or ''}"
            users = [i for i, t in enumerate(out) if t["role"] == "user"]
            if users:
                i = users[-1]
                out[i] = {"role": "user", "content": f"{out[i]['content']}\n\n{note}"}
        else:
            out.append({"role": str(turn["role"]), "content": str(turn.get("content") or "")})
    if messages and messages[-1].get("role") == "tool" and out and out[-1]["role"] == "user":
        out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n\n{RESULT_NOTE}"}
    if tools:
        howto = describe_tools(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{howto}"}
        else:
            out.insert(0, {"role": "system", "content": howto})
    return out


def property_order(schema: Any, out: list[str] | None = None) -> list[str]:
    """Every property name of `schema`, in the order the schema declares them."""
    out = [] if out is None else out
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                out.extend(k for k in value if k not in out)
            property_order(value, out)
    elif isinstance(schema, list):
        for value in schema:
            property_order(value, out)
    return out


def grammar_schema(schema: Any) -> Any:
    """`schema` less what llama.cpp's converter refuses but a validator can check afterwards: a
    `pattern` not anchored with ^...$ (JSON schema patterns match anywhere; the converter takes
    only whole-string ones). The answer is still validated against the full schema."""
    if isinstance(schema, list):
        return [grammar_schema(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: grammar_schema(v) for k, v in schema.items()}
    pattern = out.get("pattern")
    if isinstance(pattern, str) and not (pattern.startswith("^") and pattern.endswith("$")):
        del out["pattern"]
    return out


@functools.lru_cache(maxsize=64)
def _grammar(schema_json: str) -> Any:
    # lazy: llama.cpp only for local models
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    order = property_order(json.loads(schema_json))
    try:  # properties in the schema's order (the converter's default is alphabetical)
        return LlamaGrammar.from_string(json_schema_to_gbnf(schema_json, order), verbose=False)
    except Exception as e:  # noqa: BLE001 - the converter raises plain exceptions
        raise ConfigError(f"this JSON schema cannot be made into a grammar: {e}") from None


def grammar(schema: dict[str, Any]) -> Any:
    """The llama.cpp grammar for `schema` (cached); ConfigError if it cannot be converted."""
    return _grammar(json.dumps(grammar_schema(schema)))
