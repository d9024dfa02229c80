"""Structured output and tools in the engine: the checks, the vote, the text a local model reads,
the Python API (`moa.ask(..., response_format=..., tools=...)`) and `mixkit ask --schema`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from enum import Enum

import pytest
from pydantic import BaseModel, Field

from mixkit import moa
from mixkit.moa import parse_config
from mixkit.moa.agents.providers import constrained
from mixkit.moa.engine import tools as tl
from mixkit.moa.engine.output import make_spec
from mixkit.moa.engine.structured import (
    OutputInvalid,
    OutputSpecError,
    check_answer,
    check_schema,
    impossible,
)
from mixkit.testing import mixture_toml

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
MUL = {"type": "function", "function": {"name": "mul", "parameters": ADD["function"]["parameters"]}}


class Mood(str, Enum):
    glad = "glad"
    sad = "sad"


class Pet(BaseModel):
    name: str
    mood: Mood
    toys: list[str]


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        (False, ""),
        ({"not": {}}, ".not"),
        ({"enum": []}, ".enum"),
        ({"type": "string", "minLength": 3, "maxLength": 2}, ".minLength"),
        ({"type": "array", "minItems": 2, "maxItems": 1}, ".minItems"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, ".allOf"),
        ({"anyOf": [{"enum": []}, False]}, ".anyOf"),
        ({"properties": {"a": False}, "required": ["a"]}, ".properties.a"),
        ({"required": ["a"], "additionalProperties": False}, ".required"),
    ],
)
def test_impossible_schemas_are_found_and_named(schema, where):
    found = impossible(schema)
    assert found is not None and found[0] == where


@pytest.mark.parametrize(
    "schema",
    [
        Pet.model_json_schema(),
        {"type": "object"},
        {"type": "integer", "minimum": 1, "maximum": 1},
        {"properties": {"a": False}},  # an optional property nobody may send: still satisfiable
        {"allOf": [{"type": "integer"}, {"type": "number"}]},
        {"anyOf": [{"enum": []}, {"type": "string"}]},
    ],
)
def test_satisfiable_schemas_pass(schema):
    assert impossible(schema) is None
    check_schema(schema, "s")


def test_check_answer_validates_and_strips_a_fence():
    schema = Pet.model_json_schema()
    text, value, error = check_answer(
        '```json\n{"name": "Rex", "mood": "glad", "toys": []}\n```', schema
    )
    assert error is None and value["name"] == "Rex" and text.startswith("{")
    assert (
        "'happy' is not one of"
        in check_answer('{"name": "R", "mood": "happy", "toys": []}', schema)[2]
    )
    assert check_answer('{"name": "R"', schema)[2].startswith("not valid JSON")


def test_make_spec_takes_a_pydantic_model_and_names_bad_fields():
    spec = make_spec(response_format=Pet)
    assert spec is not None and spec.schema == Pet.model_json_schema()
    assert make_spec() is None and make_spec(tools=[ADD], tool_choice="none") is None
    with pytest.raises(OutputSpecError) as e:
        make_spec(tools=[ADD], tool_choice={"type": "function", "function": {"name": "sub"}})
    assert e.value.param == "tool_choice.function.name"


def test_read_calls_reads_local_remote_forced_and_prose():
    names = {"add"}
    assert tl.read_calls('{"name": "add", "arguments": {"a": 1, "b": 2}}', names) == [
        {"name": "add", "arguments": {"a": 1, "b": 2}}
    ]
    remote = '{"tool_calls": [{"id": "c9", "name": "add", "arguments": {"a": 1, "b": 2}}]}'
    assert tl.read_calls(remote, names)[0]["id"] == "c9"
    assert tl.read_calls('{"a": 1, "b": 2}', names, forced="add")[0]["name"] == "add"
    assert tl.read_calls("The answer is 3.", names) is None
    assert tl.read_calls('{"name": "sub", "arguments": {}}', names) is None  # not a tool: prose
    assert "'b' is a required property" in tl.check_calls(
        [{"name": "add", "arguments": {"a": 1}}], [ADD]
    )


def test_the_vote_of_proposals():
    call = '{"name": "%s", "arguments": {"a": 1, "b": 2}}'
    add, mul, prose = call % "add", call % "mul", "It is 3."
    tools = [ADD, MUL]
    assert tl.vote([add, add, prose], tools, "auto") == ("add", {"add": 2, "(answer)": 1})
    assert tl.vote([add, prose], tools, "auto")[0] == tl.ANSWER  # a tie answers in prose
    assert tl.vote([prose, prose, mul], tools, "required")[0] == "mul"  # the most-proposed call
    assert tl.vote([prose], tools, "required")[0] == tl.ANY  # nobody called: the aggregator picks
    named = {"type": "function", "function": {"name": "mul"}}
    assert tl.vote([add, add], tools, named)[0] == "mul"
    assert tl.vote(['{"name": "mul", "arguments": {"a": 1', prose], tools, "required")[0] == "mul"


def test_a_local_model_reads_tool_turns_as_notes_on_the_users_message():
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
    }
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1 + 2?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
    ]
    out = constrained.text_messages(messages, [ADD])
    assert [m["role"] for m in out] == ["system", "user"]
    assert (
        out[0]["content"].startswith("Be brief.") and '"name": <function name>' in out[0]["content"]
    )
    assert 'The tool add was called with {"a": 1, "b": 2} and returned: 3' in out[1]["content"]
    assert out[1]["content"].endswith(constrained.RESULT_NOTE)


def test_the_grammar_keeps_the_schemas_property_order():
    assert constrained.property_order(Pet.model_json_schema()) == ["name", "mood", "toys"]


def test_an_unanchored_pattern_is_left_to_the_validator():
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "[0-9]{3}"}}}
    assert "pattern" not in constrained.grammar_schema(schema)["properties"]["code"]
    assert constrained.grammar(schema) is not None  # llama.cpp's converter refuses it as is
    anchored = {"type": "string", "pattern": "^[0-9]{3}$"}
    assert constrained.grammar_schema(anchored) == anchored
    assert "does not match" in check_answer('{"code": "abc"}', schema)[2]


def config(url: str, aggregator: str = "ok"):
    agent = {"provider": "openai", "base_url": url, "model": "ok"}
    return parse_config(
        {
            "name": "fake",
            "agents": {"p": agent, "agg": {**agent, "model": aggregator}},
            "layers": [{"agents": ["p", "p"]}],
            "aggregator": "agg",
            "retries": 0,
        }
    )


def test_the_python_api_returns_json_and_tool_calls(scripted, tmp_path):
    answer = moa.ask(
        "A pet?", config=config(scripted.url), response_format=Pet, log=tmp_path / "l.db"
    )
    assert Pet.model_validate_json(answer.answer).toys
    assert answer.structured["validated"] is True
    called = moa.ask(
        "1 + 2?", config=config(scripted.url), tools=[ADD], tool_choice="required", log=False
    )
    assert called.answer == "" and called.tool_calls[0]["function"]["name"] == "add"
    assert called.structured["votes"] == {"add": 2} and called.structured["decision"] == "add"
    run = moa.logs.recent_runs(1, db=tmp_path / "l.db")[0]
    assert run.structured["response_format"]["json_schema"]["name"] == "Pet"


def test_auto_answers_in_prose_when_the_proposals_do(scripted):
    answer = moa.ask("Hello?", config=config(scripted.url), tools=[ADD], log=False)
    assert answer.answer and answer.tool_calls is None
    assert answer.structured["votes"] == {"(answer)": 2}
    assert answer.structured["decision"] == "(answer)"


def test_the_python_api_raises_when_the_answer_stays_invalid(scripted):
    with pytest.raises(OutputInvalid, match="after one repair"):
        moa.ask(
            "A pet?", config=config(scripted.url, "jsonnever:api"), response_format=Pet, log=False
        )


class Short(BaseModel):
    name: str = Field(max_length=16)
    mood: Mood


def test_a_local_model_answers_json_under_its_grammar():
    smol = {"provider": "local", "model": "smollm2-135m", "max_tokens": 48, "temperature": 0.7}
    cfg = parse_config({"name": "s", "agents": {"s": smol}, "layers": [], "aggregator": "s"})
    for _ in range(3):  # sampled at 0.7: every answer differs, every one is valid
        answer = moa.ask("Name a pet.", config=cfg, response_format=Short, log=False)
        Short.model_validate_json(answer.answer)  # a 135M model, and still valid: the grammar
        assert answer.structured["validated"] is True and answer.structured["repairs"] == 0


def mixkit_cli(home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIXKIT_HOME": str(home), "COLUMNS": "200"}
    cmd = [sys.executable, "-c", "from mixkit.cli import main; main()", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_mixkit_ask_schema_and_logs(scripted, tmp_path):
    (tmp_path / "c.toml").write_text(mixture_toml(scripted.url))
    (tmp_path / "pet.json").write_text(json.dumps(Pet.model_json_schema()))
    done = mixkit_cli(
        tmp_path,
        "ask",
        "A pet?",
        "-c",
        str(tmp_path / "c.toml"),
        "--schema",
        str(tmp_path / "pet.json"),
    )
    assert done.returncode == 0, done.stderr
    Pet.model_validate_json(done.stdout)
    assert "structured: json_schema 'pet'" in done.stderr and "validated" in done.stderr
    logs = mixkit_cli(tmp_path, "logs", "-n", "1")
    assert "structured: json_schema 'pet'" in logs.stdout and "validated" in logs.stdout
    (tmp_path / "bad.json").write_text('{"type": "object", "properties": {"a": {"type": "strng"}}}')
    bad = mixkit_cli(
        tmp_path, "ask", "x", "-c", str(tmp_path / "c.toml"), "--schema", str(tmp_path / "bad.json")
    )
    assert (
        bad.returncode == 2 and "properties.a.type" in bad.stderr and "Traceback" not in bad.stderr
    )
    obj = mixkit_cli(
        tmp_path, "ask", "x", "-c", str(tmp_path / "c.toml"), "--json-object", "--json"
    )
    assert obj.returncode == 0 and isinstance(json.loads(json.loads(obj.stdout)["answer"]), dict)
