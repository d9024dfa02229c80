"""The engine against a real, misbehaving OpenAI-compatible server on 127.0.0.1.

Each test names its own models (a uuid suffix), so the server's per-model counters never collide.
Time is measured only to bound "it never hangs", with generous limits.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid

import pytest

from mixkit.errors import ConfigError, ProviderError
from mixkit.moa import LayerFailed, MoA, parse_config


def key() -> str:
    return uuid.uuid4().hex[:8]


def agent(url: str, model: str, **kw) -> dict:
    return {"provider": "openai", "base_url": url, "model": model, "max_tokens": 16, **kw}


def build(
    url: str,
    layers: list[list[str]],
    aggregator: str | None = None,
    layer_opts: dict | None = None,
    **top,
):
    """A config whose proposer layers use the given scripted models, and an ok aggregator."""
    agents, layer_cfgs = {}, []
    for i, models in enumerate(layers):
        names = []
        for j, model in enumerate(models):
            agents[f"p{i}_{j}"] = agent(url, model)
            names.append(f"p{i}_{j}")
        layer_cfgs.append({"agents": names, **(layer_opts or {})})
    agents["agg"] = agent(url, aggregator or f"ok:final answer {key()}")
    return MoA(
        parse_config({"agents": agents, "layers": layer_cfgs, "aggregator": "agg", **top}),
        log=False,
    )


def by_agent(answer) -> dict:
    return {c.agent: c for c in answer.calls}


def test_500s_are_retried_then_reported_while_quorum_answers(scripted):
    moa = build(scripted.url, [[f"ok:fine {key()}", f"fail500:{key()}"]], retries=2)
    answer = moa.run("q?")
    calls = by_agent(answer)
    assert answer.answer.strip()
    assert calls["p0_0"].outcome == "ok"
    assert calls["p0_1"].outcome == "error" and "500" in calls["p0_1"].error
    assert calls["p0_1"].attempts == 3  # 1 + retries


def test_flaky_500_recovers_by_retrying(scripted):
    model = f"flaky500:{key()}"
    answer = build(scripted.url, [[model]], retries=2).run("q?")
    call = by_agent(answer)["p0_0"]
    assert call.outcome == "ok" and call.attempts == 3
    assert call.response == "recovered after 2 failures"  # the server's text, passed through
    assert len(scripted.bodies(model)) == 3


def test_429_waits_for_retry_after(scripted):
    model = f"ratelimit:{key()}"
    answer = build(scripted.url, [[model]], retries=2).run("q?")
    assert by_agent(answer)["p0_0"].outcome == "ok"
    times = [r["time"] for r in scripted.requests() if r["body"]["model"] == model]
    assert len(times) == 2
    assert times[1] - times[0] >= 0.9  # Retry-After: 1 was honoured (a lower bound only)


def test_429_past_the_deadline_is_rate_limited_error(scripted):
    # Retry-After (1 s) would pass the deadline at once, so the 429 is the call's end: the test
    # needs only the first answer inside 0.95 s, not a second one (as a longer deadline would)
    moa = build(
        scripted.url, [[f"ok:fine {key()}", f"ratelimited:{key()}"]], retries=5, deadline_s=0.95
    )
    answer = moa.run("q?")
    assert by_agent(answer)["p0_1"].error.startswith("RateLimited")


def test_hang_past_deadline_times_out_and_quorum_proceeds(scripted):
    moa = build(scripted.url, [[f"ok:quick {key()}", f"hang:{key()}"]], deadline_s=2.0)
    answer = moa.run("q?")  # a deadline not enforced would hang here (pytest-timeout fails it)
    calls = by_agent(answer)
    assert calls["p0_0"].outcome == "ok"
    assert calls["p0_1"].outcome == "error" and calls["p0_1"].error.startswith("Timeout")
    assert answer.answer.strip()


def test_quorum_met_cancels_the_slow_agent(scripted):
    moa = build(
        scripted.url,
        [[f"ok:a {key()}", f"ok:b {key()}", f"hang:{key()}"]],
        layer_opts={"quorum": 2},
        deadline_s=30,
    )
    answer = moa.run("q?")
    assert by_agent(answer)["p0_2"].outcome == "cancelled"  # not waited on until its deadline
    assert [c.outcome for c in answer.calls if c.layer == 1].count("ok") == 2


def test_too_few_answers_fails_clearly_and_on_time(scripted):
    moa = build(
        scripted.url,
        [[f"hang:{key()}", f"fail500:{key()}", f"ok:x {key()}"]],
        layer_opts={"min_answers": 2},
        deadline_s=2.0,
        retries=1,
    )
    with pytest.raises(LayerFailed) as info:
        moa.run("q?")
    message = str(info.value)
    assert "1 of 3 agents answered, 2 needed" in message
    assert "p0_0: Timeout" in message and "p0_1:" in message and "500" in message
    failed = {c.agent: c for c in info.value.calls}  # typed: the failed calls, not a message
    assert info.value.layer == 1 and set(failed) == {"p0_0", "p0_1"}
    assert failed["p0_0"].outcome == "error" and failed["p0_0"].error.startswith("Timeout")
    assert not info.value.deadline_expired  # p0_1 failed with a 500, not for lack of time


def test_a_layer_that_runs_out_of_time_says_so(scripted):
    moa = build(scripted.url, [[f"hang:{key()}", f"hang:{key()}"]], deadline_s=1.0, retries=0)
    with pytest.raises(LayerFailed) as info:
        moa.run("q?")
    assert info.value.deadline_expired and info.value.layer == 1
    assert [c.agent for c in info.value.calls] == ["p0_0", "p0_1"]


def test_cut_stream_is_retried_then_reported(scripted):
    model = f"cut:{key()}"
    answer = build(scripted.url, [[f"ok:whole {key()}", model]], retries=1).run("q?")
    call = by_agent(answer)["p0_1"]
    assert call.outcome == "error" and call.attempts == 2
    assert len(scripted.bodies(model)) == 2
    agg_prompt = scripted.bodies(answer.calls[-1].model)[-1]["messages"][-1]["content"]
    assert "partial answer" not in agg_prompt


def test_malformed_json_is_an_error_without_retry(scripted):
    model = f"badjson:{key()}"
    answer = build(scripted.url, [[f"ok:fine {key()}", model]], retries=2).run("q?")
    call = by_agent(answer)["p0_1"]
    assert call.outcome == "error" and "malformed" in call.error
    assert call.attempts == 1


def test_empty_content_is_an_error(scripted):
    answer = build(scripted.url, [[f"ok:fine {key()}", f"empty:{key()}"]]).run("q?")
    assert "empty completion" in by_agent(answer)["p0_1"].error


def test_aggregator_failure_raises(scripted):
    with pytest.raises(LayerFailed, match="500") as info:
        build(scripted.url, [[f"ok:fine {key()}"]], aggregator=f"fail500:{key()}", retries=0).run(
            "q?"
        )
    assert info.value.layer == 2 and [c.agent for c in info.value.calls] == ["agg"]
    assert not info.value.deadline_expired and isinstance(info.value, ProviderError)


def test_aggregator_prompt_has_question_and_every_answer(scripted):
    tag = key()
    answers = [f"alpha-{tag} says 41", f"beta-{tag} says 42", f"gamma-{tag}: 1. first 2. second"]
    agg_model = f"ok:synthesis {tag}"
    question = f"What is the answer, {tag}?"
    build(scripted.url, [[f"ok:{a}" for a in answers]], aggregator=agg_model).run(question)
    (request,) = scripted.bodies(agg_model)
    prompt = "\n".join(m["content"] for m in request["messages"])
    assert question in prompt
    for a in answers:
        assert a in prompt
    assert prompt.count("<response ") == 3  # the inner numbered list did not add references


def test_second_layer_sees_first_layer_answers(scripted):
    tag = key()
    first = [f"ok:first-{tag}-a", f"ok:first-{tag}-b"]
    second = f"ok:second-{tag}"
    build(scripted.url, [first, [second]]).run(f"question {tag}")
    (request,) = scripted.bodies(second)
    prompt = "\n".join(m["content"] for m in request["messages"])
    assert f"question {tag}" in prompt and f"first-{tag}-a" in prompt and f"first-{tag}-b" in prompt


def test_multi_turn_history_reaches_every_agent(scripted):
    tag = key()
    history = [
        {"role": "user", "content": f"earlier question {tag}"},
        {"role": "assistant", "content": f"earlier MoA answer {tag}"},
    ]
    proposer, agg = f"ok:p-{tag}", f"ok:agg-{tag}"
    build(scripted.url, [[proposer]], aggregator=agg).run(f"follow-up {tag}", messages=history)
    for model in (proposer, agg):
        (request,) = scripted.bodies(model)
        roles = [m["role"] for m in request["messages"]]
        contents = [m["content"] for m in request["messages"]]
        assert roles[-3:] == ["user", "assistant", "user"]
        assert contents[-2] == f"earlier MoA answer {tag}"


def test_final_answer_streams_before_the_server_finishes(scripted):
    moa = build(scripted.url, [[f"ok:fine {key()}"]], aggregator=f"gated:{key()}")
    scripted.close_gate()

    async def go():
        stream = moa.stream("q?")
        # the server holds the rest until released: a first piece that only came with the whole
        # answer would never arrive, and the wait would end in TimeoutError
        first = await asyncio.wait_for(stream.__anext__(), 60.0)
        scripted.release()
        rest = [p async for p in stream]
        return first, rest, stream.result

    first, rest, result = asyncio.run(go())
    assert first.strip() and rest
    assert result.answer == first + "".join(rest)


def test_api_key_is_never_logged(scripted, home, monkeypatch):
    secret = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("MIXKIT_TEST_KEY", secret)
    cfg = {
        "agents": {
            "ok": agent(scripted.url, f"ok:fine {key()}", api_key_env="MIXKIT_TEST_KEY"),
            "leaky": agent(scripted.url, f"authecho:{key()}", api_key_env="MIXKIT_TEST_KEY"),
        },
        "layers": [{"agents": ["ok", "leaky"]}],
        "aggregator": "ok",
    }
    answer = MoA(parse_config(cfg)).run("q?")
    leaky = by_agent(answer)["leaky"]
    assert leaky.outcome == "error" and "401" in leaky.error and secret not in leaky.error
    assert any(
        secret in r["headers"].get("authorization", "") for r in scripted.requests()
    )  # it was sent
    db_bytes = (home / "logs.db").read_bytes()
    assert b"***" in db_bytes and secret.encode() not in db_bytes
    rows = (
        sqlite3.connect(home / "logs.db")
        .execute("SELECT error FROM calls WHERE agent = 'leaky'")
        .fetchall()
    )
    assert rows and "401" in rows[0][0]


def test_missing_api_key_env_is_a_clear_error(scripted, monkeypatch):
    monkeypatch.delenv("MIXKIT_ABSENT_KEY", raising=False)
    cfg = {
        "agents": {"a": agent(scripted.url, f"ok:x {key()}", api_key_env="MIXKIT_ABSENT_KEY")},
        "aggregator": "a",
    }
    with pytest.raises(
        ConfigError, match=r"agents\.a\.api_key_env: .*MIXKIT_ABSENT_KEY is not set"
    ):
        MoA(parse_config(cfg), log=False).run("q?")
    assert "MIXKIT_ABSENT_KEY" not in os.environ


def test_a_run_carries_the_deadline_it_used(scripted):
    moa = build(scripted.url, [[f"ok:fine {key()}"]], deadline_s=9.0)
    assert moa.run("q?").deadline_s == 9.0  # the mixture's
    assert moa.run("q?", deadline_s=4.0).deadline_s == 4.0  # a run's own, as RunOptions sets it
