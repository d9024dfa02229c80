"""Tool calls in a mixture: check the tools a run is given, read the calls agents write, vote.

Agents write a call as text: a local model as `{"name": ..., "arguments": {...}}` (it reads the
tool definitions in its system prompt, providers/constrained.py), a remote one through its API's
`tool_calls`, which the provider hands over as `{"tool_calls": [{"id", "name", "arguments"}]}`.
`read_calls` reads both.

How a mixture combines proposals that disagree (`vote`): each proposal is one vote, for the
function it calls first or for answering in prose. With tool_choice "auto" the plurality wins
(a tie goes to answering in prose); with "required" the most-proposed function wins (no proposal
calling any: the final agent picks among all of them); a named function is always the choice.
The final agent (the aggregator, with the proposals as references) then writes the chosen
call's arguments under the function's schema, or the answer.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from typing import Any

from mixkit.moa.engine.structured import OutputSpecError, check_schema, check_value, strip_fence

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CALL_START = re.compile(r'^\{\s*"name"\s*:\s*"([a-zA-Z0-9_-]{1,64})"')
ANSWER = "(answer)"  # a vote for answering in prose
ANY = "(any)"  # "required", and no proposal named a function: the final agent picks one
CHOICE_HELP = "'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}"
Tool = dict[str, Any]
Call = dict[str, Any]  # {"name": ..., "arguments": ...} (+ "id" from a remote agent)


def check_tools(tools: Any, tool_choice: Any) -> None:
    """OutputSpecError naming the first bad field of `tools` / `tool_choice`."""
    if tools is None:
        if tool_choice not in (None, "auto", "none"):
            raise OutputSpecError("tool_choice", "needs tools (the request has none)")
        return
    if not isinstance(tools, list) or not tools:
        raise OutputSpecError("tools", "must be a non-empty list of {'type': 'function', ...}")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise OutputSpecError(f"{where}.type", "must be 'function'")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise OutputSpecError(
                f"{where}.function", "missing: give {'name': ..., 'parameters': {...}}"
            )
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise OutputSpecError(f"{where}.function.name", "must be 1-64 letters, digits, _ or -")
        if name in names:
            raise OutputSpecError(f"{where}.function.name", f"'{name}' is defined twice")
        names.add(name)
        if "parameters" in fn:
            check_schema(fn["parameters"], f"{where}.function.parameters", object_only=True)
    check_choice(tool_choice, names)


def check_choice(choice: Any, names: set[str]) -> None:
    if choice is None or choice in ("auto", "none", "required"):
        return
    if not (isinstance(choice, dict) and choice.get("type") == "function"):
        raise OutputSpecError("tool_choice", f"must be {CHOICE_HELP}")
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if name not in names:
        raise OutputSpecError(
            "tool_choice.function.name",
            f"no tool is named {name!r} (tools: {', '.join(sorted(names))})",
        )


def by_name(tools: list[Tool]) -> dict[str, Tool]:
    return {t["function"]["name"]: t for t in tools}


def forced_name(tool_choice: str | dict[str, Any]) -> str | None:
    """The function a named tool_choice forces, else None."""
    return tool_choice["function"]["name"] if isinstance(tool_choice, dict) else None


def parameters(tool: Tool) -> dict[str, Any]:
    return dict(tool["function"].get("parameters") or {"type": "object"})


def any_call_schema(tools: list[Tool]) -> dict[str, Any]:
    """One call of any of `tools`: `{"name": <its name>, "arguments": <its parameters>}`."""
    branches = [
        {
            "type": "object",
            "properties": {"name": {"const": t["function"]["name"]}, "arguments": parameters(t)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return branches[0] if len(branches) == 1 else {"oneOf": branches}


def _json_object(text: str) -> dict[str, Any] | None:
    """The JSON object `text` is (or holds, between its first '{' and last '}'), else None."""
    text = strip_fence(text)
    for candidate in (text, text[text.find("{") : text.rfind("}") + 1]):
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        return value if isinstance(value, dict) else None
    return None


def read_calls(text: str, names: set[str], forced: str | None = None) -> list[Call] | None:
    """The calls `text` makes, or None when it is an answer in prose. `forced`: the text is that
    function's arguments alone (a local agent told which function to call)."""
    value = _json_object(text)
    if value is None:
        return None
    if isinstance(value.get("tool_calls"), list):  # a remote agent's tool_calls
        return [c if isinstance(c, dict) else {"name": None} for c in value["tool_calls"]]
    if forced is not None:
        return [{"name": forced, "arguments": value}]
    if value.get("name") in names:
        return [{"name": value["name"], "arguments": value.get("arguments", {})}]
    return None


def check_calls(calls: list[Call], tools: list[Tool]) -> str | None:
    """Why `calls` are not valid calls of `tools` (unknown name, arguments off-schema), or None."""
    known = by_name(tools)
    for i, call in enumerate(calls):
        name = call.get("name")
        if name not in known:
            return f"call {i}: there is no function named {name!r} (functions: {', '.join(known)})"
        args = call.get("arguments")
        if not isinstance(args, dict):
            return f"call {i} ({name}): the arguments must be a JSON object"
        if (why := check_value(args, parameters(known[name]))) is not None:
            return f"call {i} ({name}) arguments {why}"
    return None


def _named(text: str) -> str | None:
    """The function a call cut short (no closing brace) names: `{"name": "add", ...`."""
    match = CALL_START.match(strip_fence(text))
    return match.group(1) if match else None


def vote(proposals: list[str], tools: list[Tool], tool_choice: Any) -> tuple[str, dict[str, int]]:
    """The mixture's choice from its proposals: a function name, ANSWER or ANY; and the votes."""
    names = set(by_name(tools))
    votes: Counter[str] = Counter()
    for text in proposals:
        calls = read_calls(text, names)
        first = calls[0].get("name") if calls else _named(text)  # cut short: still a call
        votes[first if first in names else ANSWER] += 1
    if (named := forced_name(tool_choice)) is not None:
        return named, dict(votes)
    if tool_choice == "required":
        called = [(n, k) for n, k in votes.most_common() if n != ANSWER]
        return (called[0][0] if called else ANY), dict(votes)
    if not votes:
        return ANSWER, {}
    top = max(votes.values())
    tied = [n for n, k in votes.items() if k == top]
    return (ANSWER if ANSWER in tied else tied[0]), dict(votes)


def openai_calls(calls: list[Call]) -> list[dict[str, Any]]:
    """Calls in OpenAI's `tool_calls` shape, each with a fresh id (or the remote agent's)."""
    return [
        {
            "id": c.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
        }
        for c in calls
    ]
