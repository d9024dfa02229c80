"""The program agent: its model's program runs in the real sandbox and its output is the answer.

The model is the fake OpenAI backend returning fixed programs (`ok:TEXT`, or `seq:A|||B` for a
failing program and then its fix), or the embedded Qwen2.5-Coder-0.5B writing its own.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from mixkit.cli import app
from mixkit.errors import ConfigError, LayerFailed
from mixkit.evals.collect import run_item
from mixkit.evals.tasks import FileTask, Item, score_answer
from mixkit.moa import MoA, Reasoning, RunEvent, logs, parse_config
from mixkit.moa.agents.program import (
    complete_program,
    extract_program,
    printed_answer,
    program_problem,
)


def program_config(url: str, model: str, deadline_s: float = 20, **agent) -> dict:
    coder = {"provider": "openai", "base_url": url, "model": model, "kind": "program", **agent}
    return {
        "name": "prog",
        "aggregator": "coder",
        "deadline_s": deadline_s,
        "retries": 0,
        "agents": {"coder": coder},
    }


def last_user(body: dict) -> str:
    return [m["content"] for m in body["messages"] if m["role"] == "user"][-1]


@pytest.mark.parametrize(
    "reply, program",
    [
        ("Here:\n```python\nprint(1)\n```\nIt prints 1.", "print(1)"),
        ("```py\nx = 2\n```\n```\n2\n```", "x = 2"),  # the labelled block, not the output
        ("```python\nprint(3)", "print(3)"),  # cut by max_tokens: still a program
        ("print(4)", "print(4)"),
    ],
)
def test_the_program_is_taken_from_a_fence_or_the_whole_reply(reply, program):
    assert extract_program(reply) == program


@pytest.mark.parametrize(
    "code, stdout",
    [
        ("x = 6 * 7\nx", "42"),  # a last bare expression is printed, as in a REPL
        ("import math\nanswer = math.factorial(4)", "24"),  # prints nothing: its last name
        ("def solve():\n    return 5 - 12", "-7"),  # only a function: called and printed
        ("print(1)\nprint(2)", "1\n2"),  # already prints: unchanged
        ("print(", ""),  # a SyntaxError is left for the sandbox to report
    ],
)
def test_complete_program_prints_what_small_models_leave_unprinted(code, stdout):
    fixed = complete_program(code)
    if not stdout:
        assert fixed == code
        return
    out: list[str] = []
    exec(compile(fixed, "<test>", "exec"), {"print": lambda *a: out.append(" ".join(map(str, a)))})
    assert "\n".join(out) == stdout


@pytest.mark.parametrize(
    "stdout, answer",
    [("-7.0\n", "-7"), ("working...\n\n  42  \n\n", "42"), ("Answer: 3.50\n", "3.50"),
     ("olleh\n", "olleh"), ("1e3\n", "1000"), ("", "")],
)  # fmt: skip
def test_printed_answer_is_the_last_line_normalised(stdout, answer):
    assert printed_answer(stdout) == answer


@pytest.mark.parametrize(
    "reply, problem",
    [
        ("Answer: 14", "an answer, not a program"),  # valid Python: an annotation
        ("```python\nAnswer: -3\n```", "an answer, not a program"),
        ("The answer is 14.", "an answer, not a program"),  # not Python at all
        ("```python\ntext = input()\nprint(text.count('r'))\n```", "calls input()"),
        ("```python\nprint(14)\n```", None),
        ("x = 14\nprint(x)", None),
    ],
)
def test_replies_that_are_plainly_no_program_are_not_run(reply, problem):
    found = program_problem(reply, complete_program(extract_program(reply)))
    assert found is None if problem is None else problem in found


def test_a_program_agent_answers_with_what_its_program_printed(scripted, tmp_path):
    db = tmp_path / "logs.db"
    moa = MoA(parse_config(program_config(scripted.url, "ok:print(-14 / 2)")), log=db)
    events: list[RunEvent] = []

    async def go() -> tuple[list[str], object]:
        stream = moa.stream("What is -14 / 2?", on_event=events.append)
        return [p async for p in stream], stream.result

    pieces, answer = asyncio.run(go())
    assert answer.answer == "-7" and answer.outcome == "ok"
    # the program streams first, as reasoning, then the answer
    kinds = [isinstance(p, Reasoning) for p in pieces]
    assert kinds == sorted(kinds, reverse=True) and kinds[0] and not kinds[-1]
    assert "".join(p for p in pieces if not isinstance(p, Reasoning)) == "-7"
    assert "print(-14 / 2)" in answer.reasoning
    types = [e.type for e in events]
    assert types.index("answer_reasoning") < types.index("answer_token")
    feed = [json.loads(json.dumps(e.to_dict())) for e in events]  # what the web's live feed sends
    assert [e["text"] for e in feed if e["type"] == "answer_token"] == ["-7"]
    (end,) = [e for e in feed if e["type"] == "call_end"]
    assert end["data"]["programs"][0]["status"] == "ok"
    (call,) = answer.calls
    assert call.response == "-7"
    assert call.programs[0]["status"] == "ok" and call.programs[0]["output"] == "-7.0\n"
    # the run log has the program, its output and its status
    logged = logs.get_run(answer.run_id, db=db)
    (entry,) = logged.calls[0].programs
    assert (entry["program"], entry["status"], entry["output"]) == (
        "print(-14 / 2)",
        "ok",
        "-7.0\n",
    )
    assert entry["mode"] in ("bwrap", "unshare")
    shown = CliRunner().invoke(app, ["logs", "--db", str(db), "-n", "1"])
    assert shown.exit_code == 0
    assert "coder program 1: ok" in shown.output and "print(-14 / 2)" in shown.output


def test_a_failed_program_is_retried_with_its_error_shown_to_the_model(scripted):
    model = "seq:# retry\nprint(1 / 0)|||print(6 * 7)"
    moa = MoA(parse_config(program_config(scripted.url, model, retries=1)), log=False)
    answer = moa.run("What is 6 * 7?")
    assert answer.answer == "42"
    assert [p["status"] for p in answer.calls[0].programs] == ["error", "ok"]
    first, second = scripted.bodies(model)
    assert "ZeroDivisionError" not in last_user(first)
    assert "ZeroDivisionError: division by zero" in last_user(second)
    assert any(
        "print(1 / 0)" in m["content"] for m in second["messages"] if m["role"] == "assistant"
    )
    assert "The program failed (error)" in answer.reasoning


def test_an_answer_instead_of_a_program_is_not_run_and_asked_again_hotter(scripted):
    model = "seq:# a bare answer\nAnswer: 14|||print(4 - 1 + 9 + 1 + 7)"
    cfg = program_config(scripted.url, model, retries=1, temperature=0.1)
    answer = MoA(parse_config(cfg), log=False).run("Calculate 4 - 1 + 9 + 1 - -7.")
    assert answer.answer == "20"
    assert [p["status"] for p in answer.calls[0].programs] == ["not run", "ok"]
    first, second = scripted.bodies(model)
    assert "your reply was an answer, not a program" in last_user(second)
    assert first["temperature"] == 0.1 and second["temperature"] == 0.7


def test_a_program_past_its_wall_limit_is_stopped_and_retried(scripted):
    model = "seq:# loop\nwhile True:\n    pass|||print(5)"
    cfg = program_config(scripted.url, model, retries=1, limits={"wall_s": 1, "cpu_s": 5})
    answer = MoA(parse_config(cfg), log=False).run("Count to five.")
    assert answer.answer == "5"
    assert [p["status"] for p in answer.calls[0].programs] == ["timeout", "ok"]
    assert "timed out after 1 s" in last_user(scripted.bodies(model)[1])


def test_a_program_agent_whose_programs_all_fail_fails_the_call_with_the_reason(scripted, tmp_path):
    model = "ok:while True:\n    pass"
    cfg = program_config(scripted.url, model, retries=0, limits={"wall_s": 1, "cpu_s": 5})
    moa = MoA(parse_config(cfg), log=tmp_path / "logs.db")
    with pytest.raises(LayerFailed, match=r"ProgramFailed: the program failed \(timeout\)"):
        moa.run("Loop forever.")
    (run,) = logs.recent_runs(1, db=tmp_path / "logs.db")
    assert run.outcome == "error"
    assert [p["status"] for p in run.calls[0].programs] == ["timeout"]


@pytest.mark.parametrize("mode", ["bwrap", "auto"])
def test_no_guaranteed_sandbox_means_a_refusal_unless_rlimits_only_is_named(
    scripted, tmp_path, monkeypatch, mode
):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither bwrap nor unshare can be found
    model = f"ok:print(2 + 2)  # {mode}"
    cfg = program_config(scripted.url, model, sandbox=mode)
    with pytest.raises(LayerFailed, match="will not run programs") as info:
        MoA(parse_config(cfg), log=False).run("2 + 2?")
    assert "bwrap" in str(info.value) and 'sandbox = "rlimits-only"' in str(info.value)
    assert scripted.bodies(model) == []  # refused before the model was asked
    weaker = program_config(scripted.url, model, sandbox="rlimits-only")
    answer = MoA(parse_config(weaker), log=False).run("2 + 2?")
    assert answer.answer == "4" and answer.calls[0].programs[0]["mode"] == "rlimits-only"


def test_program_options_on_a_text_agent_are_a_config_error():
    cfg = {
        "aggregator": "a",
        "agents": {"a": {"provider": "local", "model": "smollm2-135m", "retries": 2}},
    }
    with pytest.raises(ConfigError, match="agents.a: .*retries: only for kind = 'program'"):
        parse_config(cfg)


def test_the_embedded_coder_writes_a_program_that_answers(tmp_path):
    coder = {
        "provider": "local",
        "model": "qwen2.5-coder-0.5b",
        "kind": "program",
        "temperature": 0.0,
        "seed": 0,
        "max_tokens": 96,
        "n_ctx": 1024,
    }
    cfg = {"name": "coder", "aggregator": "coder", "agents": {"coder": coder}}
    answer = MoA(parse_config(cfg), log=False).run("What is 17 * 23 - 5?")
    assert answer.answer == "386"
    assert answer.calls[0].programs[-1]["status"] == "ok"
    assert "17 * 23" in answer.calls[0].programs[-1]["program"].replace("17*23", "17 * 23")


def test_evals_score_a_one_line_program_answer_as_it_is():
    item = Item(0, "Spell 'hello' backwards.", "olleh", {}, "exact")
    assert score_answer("olleh", item) == 1.0
    assert score_answer("no idea\nreally", item) == 0.0


def test_asked_for_json_a_program_agent_answers_as_a_text_agent(scripted):
    model = "ok:print(1)  # json"
    moa = MoA(parse_config(program_config(scripted.url, model)), log=False)
    answer = moa.run("Give me a JSON object.", response_format={"type": "json_object"})
    assert isinstance(json.loads(answer.answer), dict)
    assert answer.calls[0].programs is None and answer.reasoning is None
    assert "Write a complete Python program" not in last_user(scripted.bodies(model)[0])


def test_an_eval_item_answered_by_a_program_keeps_its_word_answer(scripted, tmp_path):
    tasks = tmp_path / "words.jsonl"
    tasks.write_text(
        json.dumps({"question": "Reverse 'hello'.", "expected": "olleh", "scorer": "exact"})
    )
    model = "ok:print('hello'[::-1])"
    moa = MoA(parse_config(program_config(scripted.url, model)), log=False)
    task = FileTask(tasks)
    (item,) = task.items()
    result = asyncio.run(run_item(moa, task, item, "single:coder", "coder", 0, None))
    assert (result.response, result.answer, result.score) == ("olleh", "olleh", 1.0)


def test_an_eval_item_counts_each_program_asked_for_as_a_model_call(scripted, tmp_path):
    """A retry is a second model call: the eval's calls per item (issue 17's budget) count it."""
    tasks = tmp_path / "six.jsonl"
    tasks.write_text(json.dumps({"question": "6 * 7?", "expected": "42", "scorer": "number"}))
    task = FileTask(tasks)
    (item,) = task.items()
    counted = {}
    for model in ("seq:# count\nprint(1 / 0)|||print(6 * 7)", "ok:print(42)"):
        moa = MoA(parse_config(program_config(scripted.url, model, retries=1)), log=False)
        result = asyncio.run(run_item(moa, task, item, "single:coder", "coder", 0, None))
        assert result.score == 1.0
        counted[model[:3]] = result.calls
    assert counted == {"seq": 2, "ok:": 1}
