"""Structured output and tool calls through `mixkit serve` to remote-shaped agents (the fake
OpenAI backend, which honours response_format and tools): pass-through, validation, repair,
a whole tool loop, with the real `openai` client."""

from __future__ import annotations

import json
from enum import Enum

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from mixkit.serve import RUN_ID_HEADER, ServeSettings
from tests.serve.helpers import ThreadServer, logged_run, mixture


class Colour(str, Enum):
    red = "red"
    green = "green"


class Part(BaseModel):
    name: str
    count: int


class Order(BaseModel):
    colour: Colour
    parts: list[Part]
    note: str


ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
Q = [{"role": "user", "content": "What is 19 + 23? Use the tool."}]


@pytest.fixture(scope="module")
def server(backend):
    configs = [
        mixture("mix", backend.url, ["ok", "ok"], "ok"),
        mixture("alone", backend.url, [], "ok"),
        mixture("repair-mix", backend.url, ["ok"], "jsonbad:r1"),
        mixture("never-mix", backend.url, ["ok"], "jsonnever:n1", retries=0),
        mixture("callbad-mix", backend.url, [], "callbad:c1"),
        mixture(
            "agree-mix",
            backend.url,
            ["ok:Answer: 4", "ok:Answer: 4"],
            "ok",
            early_exit={"min_agree": 2},
        ),  # fmt: skip
    ]
    with ThreadServer(configs, ServeSettings(max_concurrent=16)) as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=60)


@pytest.mark.parametrize("model", ["mix", "alone"])
def test_parse_returns_an_object_and_the_schema_reaches_only_the_final_agent(
    client, fresh_backend, home, model
):
    raw = client.chat.completions.with_raw_response.parse(
        model=model,
        messages=[{"role": "user", "content": "An order, please."}],
        response_format=Order,
    )
    done = raw.parse()
    parsed = done.choices[0].message.parsed
    assert isinstance(parsed, Order) and parsed.parts and parsed.colour in Colour
    bodies = fresh_backend.requests()
    with_format = [r["body"] for r in bodies if "response_format" in r["body"]]
    # proposers answer freely; the final agent gets the schema as asked (pass-through)
    assert len(with_format) == 1 and len(bodies) == (3 if model == "mix" else 1)
    run, _ = logged_run(home, raw.headers[RUN_ID_HEADER])
    structured = json.loads(run["structured_json"])
    assert with_format[0]["response_format"] == structured["response_format"]  # as the SDK sent it
    assert structured["validated"] is True and structured["repairs"] == 0
    assert structured["response_format"]["json_schema"]["name"] == "Order"


def test_json_object_is_parseable_json_streamed_too(client):
    r = client.chat.completions.create(
        model="mix", messages=Q, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="mix", messages=Q, response_format={"type": "json_object"}, stream=True
        )
        if c.choices
    ]
    assert isinstance(json.loads("".join(pieces)), dict)


def test_an_off_schema_answer_is_repaired_once_and_the_repair_is_logged(client, home, server):
    raw = client.chat.completions.with_raw_response.parse(
        model="repair-mix", messages=Q, response_format=Order
    )
    assert isinstance(raw.parse().choices[0].message.parsed, Order)
    run, calls = logged_run(home, raw.headers[RUN_ID_HEADER])
    structured = json.loads(run["structured_json"])
    assert structured["validated"] is True and structured["repairs"] == 1
    assert "required property" in structured["errors"][0]
    assert [c["agent"] for c in calls] == ["p-ok", "agg", "agg@repair"]
    web = httpx.get(f"{server.base}/api/runs/{raw.headers[RUN_ID_HEADER]}", timeout=10).json()
    assert web["structured"] == structured  # the web run view shows it


def test_an_answer_still_invalid_after_its_repair_is_an_error_never_text(client, server):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.parse(model="never-mix", messages=Q, response_format=Order)
    assert e.value.status_code == 502 and e.value.code == "invalid_output"
    assert "after one repair" in e.value.message
    with pytest.raises(openai.APIError):  # streamed: held until valid, so an error, no text
        stream = client.chat.completions.create(
            model="never-mix", messages=Q, response_format={"type": "json_schema",
            "json_schema": {"name": "Order", "schema": Order.model_json_schema()}}, stream=True,
        )  # fmt: skip
        list(stream)
    assert server.health()["status"] == "ok"


def _tool_loop(client, model: str, *, stream: bool) -> tuple[dict, str]:
    """required -> a call; run it; send the result; return (the call's arguments, the answer)."""
    if stream:
        with client.beta.chat.completions.stream(
            model=model, messages=Q, tools=[ADD], tool_choice="required"
        ) as s:
            done = s.get_final_completion()
    else:
        done = client.chat.completions.create(
            model=model, messages=Q, tools=[ADD], tool_choice="required"
        )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, ADD["function"]["parameters"])
    result = str(args["a"] + args["b"])
    follow = [*Q, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": result}]  # fmt: skip
    answer = client.chat.completions.create(model=model, messages=follow, tools=[ADD])
    return args, answer.choices[0].message.content


@pytest.mark.parametrize("model", ["mix", "alone"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_whole_tool_loop_through_remote_agents(client, fresh_backend, model, stream):
    args, answer = _tool_loop(client, model, stream=stream)
    assert answer == f"The tool returned {args['a'] + args['b']}."  # the final agent used it
    first_call = [r["body"] for r in fresh_backend.requests() if r["body"].get("tools")]
    assert all(b["tools"] == [ADD] for b in first_call)  # every agent saw the tool (pass-through)
    final = first_call[2 if model == "mix" else 0]  # the first request's final agent
    assert final["tool_choice"] in ("required", {"type": "function", "function": {"name": "add"}})


def test_arguments_that_are_not_json_get_a_repair(client, home):
    raw = client.chat.completions.with_raw_response.create(
        model="callbad-mix", messages=Q, tools=[ADD], tool_choice="required"
    )
    call = raw.parse().choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), ADD["function"]["parameters"])
    run, _ = logged_run(home, raw.headers[RUN_ID_HEADER])
    structured = json.loads(run["structured_json"])
    assert structured["repairs"] == 1 and "must be a JSON object" in structured["errors"][0]
    assert structured["tool_calls"][0]["function"]["name"] == "add"


def test_with_a_schema_a_mixture_ends_with_its_aggregator_even_when_proposals_agree(
    client, fresh_backend
):
    plain = client.chat.completions.create(model="agree-mix", messages=Q)
    assert plain.choices[0].message.content == "Answer: 4"  # early exit: no aggregator call
    assert len(fresh_backend.requests()) == 2
    fresh_backend.reset()
    done = client.chat.completions.parse(model="agree-mix", messages=Q, response_format=Order)
    assert isinstance(done.choices[0].message.parsed, Order)  # the constrained aggregator wrote it
    bodies = [r["body"] for r in fresh_backend.requests()]
    assert len(bodies) == 3 and "response_format" in bodies[-1]


def test_constrain_proposers_puts_the_proposers_under_the_schema_too(client, fresh_backend):
    done = client.chat.completions.parse(
        model="mix", messages=Q, response_format=Order, extra_body={"constrain_proposers": True}
    )
    assert isinstance(done.choices[0].message.parsed, Order)
    bodies = [r["body"] for r in fresh_backend.requests()]
    assert len(bodies) == 3 and all("response_format" in b for b in bodies)
