"""Structured output and tool calls on the embedded models behind `mixkit serve`, with the real
`openai` client: a gated mixture whose gate lets Qwen answer alone, and the self-moa preset
(three Qwen proposals, a Qwen aggregator). The final answers decode under llama.cpp grammars, so
they parse every time; how many are also sensible for their prompt is counted and printed
(docs/benchmarks.md, "Structured output", has the command and the counts)."""

from __future__ import annotations

import json
from enum import Enum

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from mixkit.moa import load_preset, parse_config
from mixkit.moa.gate import model as g
from mixkit.serve import RUN_ID_HEADER
from tests.serve.helpers import ThreadServer, logged_run

pytestmark = pytest.mark.slow


class Kind(str, Enum):
    animal = "animal"
    fruit = "fruit"
    city = "city"
    vehicle = "vehicle"
    instrument = "instrument"


class Origin(BaseModel):
    country: str
    continent: str


class Thing(BaseModel):
    name: str
    kind: Kind
    origin: Origin
    tags: list[str] = Field(max_length=3)


# (subject, the kind a sensible answer names, a word its name should contain)
SUBJECTS = [
    ("a banana", "fruit", "banana"),
    ("Paris", "city", "paris"),
    ("a violin", "instrument", "violin"),
    ("a kangaroo", "animal", "kangaroo"),
    ("a bicycle", "vehicle", "bic"),
    ("Tokyo", "city", "tokyo"),
    ("a mango", "fruit", "mango"),
    ("a giant panda", "animal", "panda"),
    ("a piano", "instrument", "piano"),
    ("a yellow taxi", "vehicle", "taxi"),
]
ASK = "Describe {} as JSON: its name, its kind, where it comes from, and up to three tags."
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
QWEN = {"provider": "local", "model": "qwen2.5-coder-0.5b", "temperature": 0.2, "n_ctx": 2048}
SMOL = {"provider": "local", "model": "smollm2-135m", "n_ctx": 2048}


def gated_config(tmp_path):
    """A gated mixture of Qwen and SmolLM whose gate has only seen Qwen right: it answers alone."""
    prompts = [ASK.format(s) for s, _, _ in SUBJECTS] + [
        f"What is {i} + {i * 7}?" for i in range(20)
    ]
    calls = []
    for p in prompts:
        calls += [g.ScoredCall(p, "qwen", 1.0, "a", "t", 30, 40),
                  g.ScoredCall(p, "smollm", 0.0, "b", "t", 30, 40)]  # fmt: skip
    path = tmp_path / "gate.json"
    g.train(calls).save(path)
    return parse_config(
        {
            "name": "gated-local",
            "agents": {"qwen": QWEN, "smollm": SMOL},
            "layers": [{"agents": ["qwen", "smollm"]}],
            "aggregator": "qwen",
            "gate": {"path": str(path), "k": 2},
        }
    )


@pytest.fixture(scope="module")
def client(home, tmp_path_factory):
    configs = [gated_config(tmp_path_factory.mktemp("gate")), load_preset("self-moa")]
    with ThreadServer(configs) as server:
        yield openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=300)


def sensible(thing: Thing, kind: str, word: str) -> bool:
    return thing.kind.value == kind and word in thing.name.lower()


def test_parse_ten_prompts_on_qwen_answering_alone(client, home):
    good = 0
    for subject, kind, word in SUBJECTS:
        raw = client.chat.completions.with_raw_response.parse(
            model="gated-local",
            messages=[{"role": "user", "content": ASK.format(subject)}],
            response_format=Thing,
            max_tokens=120,
        )
        assert raw.headers["x-mixkit-gate"] == "alone; chosen=qwen"
        thing = raw.parse().choices[0].message.parsed
        assert isinstance(thing, Thing), subject  # grammar-constrained: parsed every time
        good += sensible(thing, kind, word)
        print(f"{subject}: {thing.model_dump_json()}")
    run, _ = logged_run(home, raw.headers[RUN_ID_HEADER])
    assert json.loads(run["structured_json"])["validated"] is True
    print(f"sensible: {good} of {len(SUBJECTS)}")
    assert good >= len(SUBJECTS) // 2 + 1  # most of them


def test_parse_on_self_moa(client, home):
    subject, kind, word = SUBJECTS[0]
    raw = client.chat.completions.with_raw_response.parse(
        model="self-moa",
        messages=[{"role": "user", "content": ASK.format(subject)}],
        response_format=Thing,
        max_tokens=96,
    )
    thing = raw.parse().choices[0].message.parsed
    assert isinstance(thing, Thing), subject
    print(f"self-moa {subject}: {thing.model_dump_json()}, sensible: {sensible(thing, kind, word)}")
    run, calls = logged_run(home, raw.headers[RUN_ID_HEADER])
    assert [c["agent"] for c in calls] == ["qwen#1", "qwen#2", "qwen#3", "qwen-aggregator"]
    assert json.loads(run["structured_json"])["validated"] is True


@pytest.mark.parametrize("model", ["gated-local", "self-moa"])
def test_json_object_streams_in_pieces_and_parses(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "A JSON object with a city and its country."}],
        response_format={"type": "json_object"},
        max_tokens=48,
        stream=True,
    )
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1  # live: the grammar keeps every prefix valid, so it streams
    assert isinstance(json.loads("".join(pieces)), dict)


@pytest.mark.parametrize("model", ["gated-local", "self-moa"])
def test_an_impossible_schema_is_a_400_before_any_model_runs(client, model):
    impossible = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5,
                  "maximum": 1}}, "required": ["n"]}  # fmt: skip
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": impossible}},
        )  # fmt: skip
    assert e.value.body["param"] == "response_format.json_schema.schema.properties.n.minimum"


@pytest.mark.parametrize("model", ["gated-local", "self-moa"])
def test_a_whole_tool_loop_on_local_models(client, home, model):
    question = [{"role": "user", "content": "What is 1234 + 5678? Use the add tool."}]
    first = client.chat.completions.create(
        model=model, messages=question, tools=[ADD], tool_choice="required", max_tokens=64
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, ADD["function"]["parameters"])  # grammar-constrained arguments
    result = args["a"] + args["b"]  # the client runs the function
    follow = [*question, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": str(result)}]  # fmt: skip
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=follow, tools=[ADD], max_tokens=48
    )
    answer = raw.parse().choices[0].message.content
    print(f"{model}: {call.function.arguments} -> {result}; answer {answer!r}")
    assert str(result) in answer.replace(",", "")  # the mixture's answer uses the result
    run, _ = logged_run(home, raw.headers[RUN_ID_HEADER])
    assert json.loads(run["structured_json"])["decision"] == "(answer)"


def test_an_answer_cut_by_max_tokens_is_an_error_streamed_or_not(client):
    ask = {
        "model": "gated-local",
        "messages": [{"role": "user", "content": "A JSON object with a city and its country."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "place",
                "schema": {
                    "type": "object",
                    "required": ["city", "country"],
                    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                },
            },
        },
        "max_tokens": 3,  # too few for both keys: the grammar cannot close the object in time
    }
    pieces = []
    with pytest.raises(openai.APIError) as e:  # live: the pieces, then an error event
        for chunk in client.chat.completions.create(**ask, stream=True):
            assert not (chunk.choices and chunk.choices[0].finish_reason)  # never a finish
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces).lstrip().startswith("{") and "not valid" in e.value.message
    with pytest.raises(openai.APIStatusError) as e:  # whole: held, repaired once, then a 502
        client.chat.completions.create(**ask)
    assert e.value.status_code == 502 and e.value.code == "invalid_output"
