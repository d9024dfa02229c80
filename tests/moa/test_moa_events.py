"""The engine's event stream (`on_event=`), against the real scripted OpenAI server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from mixkit.moa import EVENT_TYPES, LayerFailed, MoA, RunEvent, ask, parse_config


def key() -> str:
    return uuid.uuid4().hex[:8]


def mixture(url: str, proposers: list[str], aggregator: str, retries: int = 1) -> MoA:
    agents = {
        f"p{i}": {"provider": "openai", "base_url": url, "model": m, "max_tokens": 16}
        for i, m in enumerate(proposers)
    }
    agents["agg"] = {"provider": "openai", "base_url": url, "model": aggregator, "max_tokens": 16}
    cfg = {"agents": agents, "layers": [{"agents": list(agents)[:-1]}], "aggregator": "agg"}
    return MoA(parse_config({**cfg, "retries": retries, "name": "events"}), log=False)


def of(events: list[RunEvent], *types: str, agent: str | None = None) -> list[RunEvent]:
    return [e for e in events if e.type in types and (agent is None or e.agent == agent)]


def tokens_after_last_retry(events: list[RunEvent], agent: str) -> str:
    """What a viewer shows for a call: its tokens, cleared at each call_retry."""
    shown: list[str] = []
    for e in of(events, "call_token", "call_retry", agent=agent):
        shown = [] if e.type == "call_retry" else [*shown, e.text or ""]
    return "".join(shown)


def test_a_run_reports_every_call_in_order(scripted):
    tag = key()
    ok, cut, fail = f"ok:one two three {tag}", f"cut:{tag}", f"fail500:{tag}"
    events: list[RunEvent] = []
    moa = mixture(scripted.url, [ok, cut, fail], f"ok:the final answer {tag}", retries=1)
    answer = moa.run("q?", on_event=events.append)

    assert [e.type for e in events][0] == "run_start" and events[-1].type == "run_end"
    assert {e.type for e in events} <= set(EVENT_TYPES)
    assert all(e.run_id == answer.run_id for e in events)
    assert [e.t for e in events] == sorted(e.t for e in events)  # t is time since the start
    start = events[0].data
    assert start["mixture"] == "events" and start["layers"] == [["p0", "p1", "p2"]]
    assert start["aggregator"] == "agg" and start["deadline_s"] == moa.config.deadline_s

    records = {c.agent: c for c in answer.calls}
    for agent, record in records.items():
        mine = [e for e in events if e.agent == agent]
        assert mine[0].type == "call_start" and mine[-1].type == "call_end"
        assert mine[0].data == {"model": record.model, "provider": "openai"}
        assert mine[-1].data == record.to_dict()
        assert tokens_after_last_retry(events, agent) == record.response
    assert tokens_after_last_retry(events, "p0") == f"one two three {tag}"
    # the cut stream: its two words arrived, then a retry cleared them, then it was cut again
    assert [e.data["attempt"] for e in of(events, "call_retry", agent="p1")] == [2]
    assert len(of(events, "call_token", agent="p1")) == 4
    assert (
        records["p1"].outcome == "error"
        and of(events, "call_end", agent="p1")[0].data["outcome"] == "error"
    )
    assert of(events, "call_end", agent="p2")[0].data["outcome"] == "error"
    assert "500" in of(events, "call_retry", agent="p2")[0].data["error"]

    layer_ends = of(events, "layer_end")
    assert [(e.layer, e.data) for e in layer_ends] == [
        (1, {"ok": 1, "calls": 3}),
        (2, {"ok": 1, "calls": 1}),
    ]
    first_end = events.index(layer_ends[0])
    assert all(events.index(e) < first_end for e in of(events, "call_end") if e.layer == 1)
    assert all(events.index(e) > first_end for e in events if e.agent == "agg")
    assert "".join(e.text or "" for e in of(events, "answer_token")) == answer.answer
    assert tokens_after_last_retry(events, "agg") == answer.answer
    end = events[-1].data
    assert end["outcome"] == "ok" and end["error"] is None
    assert end["prompt_tokens"] == answer.prompt_tokens
    assert end["completion_tokens"] == answer.completion_tokens
    assert end["critical_path_s"] == answer.critical_path_s and end["ttft_s"] == answer.ttft_s
    json.dumps([e.to_dict() for e in events])  # JSON-ready, as the playground sends them


def test_a_failed_run_ends_with_an_error_event(scripted):
    events: list[RunEvent] = []
    moa = mixture(scripted.url, [f"fail500:{key()}"], f"ok:never {key()}", retries=0)
    with pytest.raises(LayerFailed):
        moa.run("q?", on_event=events.append)
    assert [e.type for e in events] == [
        "run_start",
        "call_start",
        "call_end",
        "layer_end",
        "run_end",
    ]
    assert events[2].data["outcome"] == "error" and "500" in events[2].data["error"]
    assert events[-1].data["outcome"] == "error" and "1 needed" in events[-1].data["error"]


def test_a_stopped_run_ends_cancelled(scripted):
    events: list[RunEvent] = []
    moa = mixture(scripted.url, [f"ok:fine {key()}"], f"ok:a long final answer {key()}")

    async def first_piece_then_stop() -> None:
        stream = moa.stream("q?", on_event=events.append)
        await stream.__anext__()
        await stream.aclose()

    asyncio.run(first_piece_then_stop())
    agg_end = of(events, "call_end", agent="agg")
    assert agg_end and agg_end[0].data["outcome"] == "cancelled"
    assert events[-1].type == "run_end" and events[-1].data["outcome"] == "cancelled"


def test_a_failing_handler_never_breaks_the_run(scripted):
    def broken(event: RunEvent) -> None:
        raise RuntimeError("viewer bug")

    tag = key()
    answer = ask(
        "q?",
        config=mixture(scripted.url, [f"ok:x {tag}"], f"ok:still answered {tag}").config,
        log=False,
        on_event=broken,
    )
    assert answer.answer == f"still answered {tag}"
