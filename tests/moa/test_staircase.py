"""Staircase streaming over real HTTP agents: the aggregator starts on partial proposals, the
prompt only grows, and a proposer that dies mid-stream does not break the answer."""

from __future__ import annotations

import pytest

from mixkit.moa import MoA, parse_config
from mixkit.moa.engine.staircase import CONTINUE, STILL_WRITING
from mixkit.testing import FakeBackend


@pytest.fixture(scope="module")
def slow_backend():
    """Proposers write 12 words, 0.05 s apart: slow enough for several staircase steps."""
    with FakeBackend(ttft=0.0, gap=0.05, tokens=12) as backend:
        yield backend


def config(url: str, proposers: list[str], **staircase) -> dict:
    agents = {
        f"p{i}": {"provider": "openai", "base_url": url, "model": m}
        for i, m in enumerate(proposers)
    }
    agents["agg"] = {"provider": "openai", "base_url": url, "model": "ok:part."}
    return {
        "name": "stairs", "aggregator": "agg", "deadline_s": 20, "retries": 0,
        "staircase": {"chunk_chars": 12, "step_tokens": 4, **staircase},
        "agents": agents, "layers": [{"agents": list(agents)[:-1]}],
    }  # fmt: skip


def test_the_aggregator_starts_early_and_its_prompt_only_grows(slow_backend):
    answer = MoA(parse_config(config(slow_backend.url, ["ok", "ok"])), log=False).run("Why?")
    steps = [c for c in answer.calls if c.agent.startswith("agg@")]
    assert len(steps) >= 2, [c.agent for c in answer.calls]
    assert answer.answer == "".join(c.response for c in steps)  # the steps, concatenated
    assert all(c.outcome == "ok" for c in answer.calls)
    # the first step read partial proposals, and started before the proposers were done
    first_step = min(c.started_at for c in steps)
    proposers_done = max(c.started_at + c.latency_s for c in answer.calls if c.layer == 1)
    assert first_step < proposers_done
    bodies = [b["messages"] for b in slow_backend.bodies("ok:part.")][-len(steps) :]
    assert STILL_WRITING in bodies[0][0]["content"]
    for before, after in zip(bodies, bodies[1:], strict=False):
        assert after[: len(before)] == before  # the prompt only grows: the KV cache is reusable
        assert after[len(before)]["role"] == "assistant" and after[-1]["content"].startswith(
            CONTINUE
        )


def test_a_proposer_that_dies_mid_stream_does_not_break_the_answer(slow_backend):
    answer = MoA(parse_config(config(slow_backend.url, ["ok", "cut"])), log=False).run("Why?")
    outcomes = {c.agent: c.outcome for c in answer.calls if c.layer == 1}
    assert outcomes == {"p0": "ok", "p1": "error"}
    assert answer.answer.strip() and answer.answer.count("part.") >= 1
    first = slow_backend.bodies("ok:part.")[-sum(c.layer == 2 for c in answer.calls)]["messages"]
    assert "partial" in first[0]["content"]  # the dead proposer's text was still used
