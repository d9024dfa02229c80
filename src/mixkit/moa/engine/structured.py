"""What a run's answer must be: JSON mode, a JSON schema, tools. The request side, checked.

    spec = OutputSpec(response_format=response_format_of(MyModel))  # a pydantic model, or
    check_response_format(spec.response_format)                      # OpenAI's dict

The checks raise OutputSpecError (a ConfigError with the request's field in `param`) for what
cannot be honoured: a malformed or unsatisfiable schema (tools.py checks the tools the same way).
`check_answer` is the one validator of an answer (the `jsonschema` package). How the final
answer is made: engine/output.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from mixkit.errors import ConfigError, MixkitError

FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```$", re.DOTALL)


class OutputSpecError(ConfigError):
    """A structured-output or tool request that cannot be honoured; `param` names the field."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


class OutputInvalid(MixkitError):
    """The final answer did not validate against the requested schema, even after its repair."""


@dataclass
class OutputSpec:
    """A run's structured output. `live`: pieces of a grammar-constrained local answer stream as
    they are made (else the answer is held until it validated). `constrain_proposers`: proposers
    answer under the schema too (default: they answer freely, as material for the aggregator)."""

    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    constrain_proposers: bool = False
    live: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # room for callers' notes in the trace

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must satisfy (json_object: any object), None for text."""
        rf = self.response_format or {}
        if rf.get("type") == "json_object":
            return {"type": "object"}
        if rf.get("type") == "json_schema":
            return dict(rf["json_schema"]["schema"])
        return None

    @property
    def calls_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def active(self) -> bool:
        return self.schema is not None or self.calls_tools

    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools or []]

    def to_dict(self) -> dict[str, Any]:
        """What the run was asked for, for its trace."""
        return {
            "response_format": self.response_format,
            "tools": self.tools,
            "tool_choice": self.tool_choice if self.tools else None,
            "parallel_tool_calls": self.parallel_tool_calls if self.tools else None,
            "constrain_proposers": self.constrain_proposers,
        }


def response_format_of(value: Any) -> dict[str, Any] | None:
    """An OpenAI response_format from a dict, or from a pydantic model class (strict schema)."""
    if value is None or isinstance(value, dict):
        return value
    schema = getattr(value, "model_json_schema", None)
    if schema is None:
        raise ConfigError(
            "response_format: give an OpenAI response_format dict or a pydantic model"
        )
    return {
        "type": "json_schema",
        "json_schema": {"name": value.__name__, "schema": schema(), "strict": True},
    }


def check_response_format(rf: Any) -> None:
    if rf is None:
        return
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise OutputSpecError(
            "response_format.type", "must be 'text', 'json_object' or 'json_schema'"
        )
    if rf["type"] != "json_schema":
        return
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        raise OutputSpecError(
            "response_format.json_schema", "missing: give {'name': ..., 'schema': {...}}"
        )
    if "strict" in js and not isinstance(js["strict"], bool):
        raise OutputSpecError("response_format.json_schema.strict", "must be true or false")
    check_schema(js.get("schema"), "response_format.json_schema.schema")


def check_schema(schema: Any, param: str, *, object_only: bool = False) -> None:
    """A JSON schema that is well-formed (its metaschema) and not obviously unsatisfiable."""
    if not isinstance(schema, dict):
        raise OutputSpecError(param, "must be a JSON schema object, e.g. {'type': 'object', ...}")
    if object_only and schema.get("type", "object") != "object":
        raise OutputSpecError(f"{param}.type", "a function's parameters must be of type 'object'")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path)
        raise OutputSpecError(f"{param}{where}", f"not a valid JSON schema: {e.message}") from None
    check_refs(schema, schema, param)
    if (why := impossible(schema)) is not None:
        where, message = why
        raise OutputSpecError(f"{param}{where}", f"no JSON value can satisfy it: {message}")


def check_refs(node: Any, root: dict[str, Any], param: str, where: str = "") -> None:
    """Every `$ref` is local (`#/...`) and resolves in `root`."""
    if isinstance(node, list):
        for i, value in enumerate(node):
            check_refs(value, root, param, f"{where}[{i}]")
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str):
        target: Any = root if ref.startswith("#") else None
        pointer = ref[1:].strip("/")
        for part in pointer.split("/") if target is not None and pointer else []:
            part = part.replace("~1", "/").replace("~0", "~")  # JSON pointer escapes
            target = target.get(part) if isinstance(target, dict) else None
        if target is None:
            raise OutputSpecError(
                f"{param}{where}.$ref",
                f"'{ref}' does not resolve (only local refs such as '#/$defs/X')",
            )
    for key, value in node.items():
        if key not in ("enum", "const", "default", "examples"):
            check_refs(value, root, param, f"{where}.{key}")


_BOUNDS = (
    ("minimum", "maximum"),
    ("minLength", "maxLength"),
    ("minItems", "maxItems"),
    ("minProperties", "maxProperties"),
)


def impossible(schema: Any, where: str = "") -> tuple[str, str] | None:
    """(where, why) when `schema` obviously accepts no value, else None (not a full decision
    procedure: it finds the usual mistakes, such as `false`, `{"not": {}}`, an empty enum,
    min > max, a required property that additionalProperties forbids, or allOf types that
    exclude each other)."""
    if schema is False:
        return where, "the schema `false` accepts nothing"
    if not isinstance(schema, dict):
        return None
    if schema.get("not") in ({}, True):
        return f"{where}.not", "`not: {}` accepts nothing"
    if "enum" in schema and schema["enum"] == []:
        return f"{where}.enum", "the enum is empty"
    if schema.get("type") == []:
        return f"{where}.type", "the list of types is empty"
    for lo, hi in _BOUNDS:
        a, b = schema.get(lo), schema.get(hi)
        if isinstance(a, int | float) and isinstance(b, int | float) and a > b:
            return f"{where}.{lo}", f"{lo} ({a}) is more than {hi} ({b})"
    props = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if schema.get("additionalProperties") is False and name not in props:
            return f"{where}.required", f"'{name}' is required but no property allows it"
        if name in props and (why := impossible(props[name], f"{where}.properties.{name}")):
            return why
    types = {s.get("type") for s in schema.get("allOf") or [] if isinstance(s, dict)} - {None}
    if len(types) > 1 and not types <= {"integer", "number"}:
        return f"{where}.allOf", f"its parts need different types ({', '.join(map(str, types))})"
    for i, part in enumerate(schema.get("allOf") or []):
        if why := impossible(part, f"{where}.allOf[{i}]"):
            return why
    for key in ("anyOf", "oneOf"):
        parts = schema.get(key)
        if parts and all(impossible(p) for p in parts):
            return f"{where}.{key}", "none of its alternatives can be satisfied"
    return None


def strip_fence(text: str) -> str:
    """The answer without a Markdown code fence around it (```json ... ```), trimmed."""
    text = text.strip()
    match = FENCE.match(text)
    return match.group(1).strip() if match else text


def check_value(value: Any, schema: dict[str, Any]) -> str | None:
    """Why `value` does not satisfy `schema` (the most relevant error), or None."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    return f"at {error.json_path}: {error.message}"


def check_answer(text: str, schema: dict[str, Any]) -> tuple[str, Any, str | None]:
    """(the answer's JSON text, its value, why it is not valid for `schema` or None)."""
    text = strip_fence(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return text, None, f"not valid JSON ({e.msg} at character {e.pos})"
    return text, value, check_value(value, schema)


def describe(trace: dict[str, Any] | None) -> str | None:
    """One line on a run's structured output, for `mixkit logs` and `mixkit ask`."""
    if not trace:
        return None
    parts = []
    rf = trace.get("response_format") or {}
    if rf.get("type") == "json_schema":
        parts.append(f"json_schema '{rf.get('json_schema', {}).get('name', '?')}'")
    elif rf.get("type") == "json_object":
        parts.append("json_object")
    if trace.get("tools"):
        names = ", ".join(t["function"]["name"] for t in trace["tools"])
        parts.append(f"tools [{names}] choice {json.dumps(trace.get('tool_choice'))}")
    if trace.get("votes"):
        parts.append(f"votes {json.dumps(trace['votes'])}")
    if trace.get("decision"):
        parts.append(f"decided {trace['decision']}")
    for call in trace.get("tool_calls") or []:
        parts.append(f"called {call['function']['name']}({call['function']['arguments']})")
    valid = {True: "validated", False: "NOT valid", None: "not checked"}[trace.get("validated")]
    repairs = trace.get("repairs") or 0
    parts.append(valid + (f" after {repairs} repair" if repairs else ""))
    errors = trace.get("errors") or []
    if errors:
        parts.append(f"errors: {'; '.join(errors)}")
    return "structured: " + ", ".join(parts)
