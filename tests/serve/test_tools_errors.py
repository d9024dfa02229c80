"""Structured-output and tool requests a mixture cannot honour: each a 400 in OpenAI's error
shape naming the field, with the real `openai` client; the server stays healthy after them."""

from __future__ import annotations

import openai
import pytest

from mixkit.serve import ServeSettings
from tests.serve.helpers import ThreadServer, mixture

Q = [{"role": "user", "content": "hi"}]
OK_TOOL = {
    "type": "function",
    "function": {"name": "add", "parameters": {"type": "object", "properties": {}}},
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}


def schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


BAD = [
    # (keywords of the request, the param named, a word of the message)
    ({"response_format": schema_format({"type": "strng"})}, "response_format.json_schema.schema.type", "not a valid JSON schema"),
    ({"response_format": schema_format({"type": "object", "required": "a"})}, "response_format.json_schema.schema.required", "not a valid JSON schema"),
    ({"response_format": schema_format({"not": {}})}, "response_format.json_schema.schema.not", "no JSON value"),
    ({"response_format": schema_format({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]})},
     "response_format.json_schema.schema.properties.a.enum", "empty"),
    ({"response_format": schema_format({"type": "object", "required": ["a"], "additionalProperties": False})},
     "response_format.json_schema.schema.required", "no property allows it"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "missing"),
    ({"response_format": schema_format({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}})},
     "response_format.json_schema.schema.properties.a.$ref", "does not resolve"),
    ({"response_format": schema_format({"$ref": "https://example.com/s.json"})}, "response_format.json_schema.schema.$ref", "only local refs"),
    ({"response_format": {"type": "yaml"}}, "response_format.type", "json_schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": 5}}}}}]},
     "tools[0].function.parameters.properties.a.type", "not a valid JSON schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters.type", "object"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name", "letters"),
    ({"tools": [OK_TOOL, OK_TOOL]}, "tools[1].function.name", "twice"),
    ({"tools": [OK_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name", "no tool is named 'nope'"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"messages": [*Q, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "call_2", "content": "3"}]},
     "messages[2].tool_call_id", "answers no tool call"),
    ({"messages": [*Q, {"role": "tool", "content": "3"}]}, "messages[1].tool_call_id", "missing"),
    ({"messages": [*Q, {"role": "assistant", "tool_calls": [{"id": "c"}]}, *Q]}, "messages[1].tool_calls[0]", "function"),
    ({"logprobs": True}, "logprobs", ""),
    ({"n": 2}, "n", ""),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(backend):
    with ThreadServer([mixture("mix", backend.url, ["ok"], "ok")], ServeSettings()) as s:
        yield s


@pytest.mark.parametrize(("kwargs", "param", "word"), BAD)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    server, fresh_backend, kwargs, param, word
):
    client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=30)
    request = {"model": "mix", "messages": Q, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**request)
    error = e.value.body
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert word in error["message"] and param.split(".")[0].split("[")[0] in error["message"]
    assert fresh_backend.stats()["started"] == 0  # refused before any agent was called
    assert server.health()["status"] == "ok"
    ok = client.chat.completions.create(model="mix", messages=Q)  # and it still answers
    assert ok.choices[0].message.content
