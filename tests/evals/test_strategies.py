"""The strategies eval: parsing, the systems it runs, and how rows summarise real item results."""

from __future__ import annotations

import pytest

from mixkit.errors import ConfigError
from mixkit.evals.collect import ItemResult
from mixkit.evals.strategies import parse_strategies, summarize, systems
from mixkit.evals.tasks import Item
from mixkit.moa import load_preset


def result(system, agent, item, sample, answer, score, ttft=1.0, calls=1, **kw) -> ItemResult:
    return ItemResult(
        task=kw.get("task", "t"), item=Item(item, f"q{item}", "7"), system=system, agent=agent,
        sample=sample, response=f"Answer: {answer}", answer=answer, score=score, failed=False,
        run_id=None, ttft_s=ttft, wall_s=ttft * 2, calls=calls, prompt_tokens=10,
        completion_tokens=5, cost_usd=kw.get("cost"), early_exit=kw.get("early_exit", False),
        gate=kw.get("gate"),
    )  # fmt: skip


def test_unknown_strategies_and_agents_are_config_errors():
    with pytest.raises(ConfigError, match="unknown strategy 'best'"):
        parse_strategies("single,best")
    with pytest.raises(ConfigError, match="single=nobody: no such agent"):
        systems(load_preset("gated"), ["single=nobody"])
    with pytest.raises(ConfigError, match="single=AGENT\\*N"):
        systems(load_preset("gated"), ["single=qwen*x"])
    with pytest.raises(ConfigError, match="needs a mixture with a \\[gate\\]"):
        systems(load_preset("self-moa"), ["gated"])


def test_systems_expand_singles_and_switch_mitigations():
    cfg = load_preset("gated")
    plan = {label: (c, agent, n) for label, c, agent, n in systems(
        cfg, ["single=qwen*3", "single=qwen-program", "moa", "gated", "gated+exit", "gated+budgets"], 1
    )}  # fmt: skip
    assert plan["single:qwen"][1:] == ("qwen", 3) and plan["single:qwen-program"][1:] == (
        "qwen-program",
        1,
    )
    assert plan["single:qwen"][0].layers == [] and plan["single:qwen"][0].gate is None
    assert plan["moa"][0].gate is None and plan["moa"][0].early_exit is None
    assert plan["gated"][0].gate is not None and plan["gated"][0].early_exit is None
    assert plan["gated+exit"][0].early_exit is not None
    budget = plan["gated+budgets"][0]
    assert budget.layers[0].quorum == cfg.gate.k - 1
    assert budget.agents["qwen"].max_tokens < cfg.agents["qwen"].max_tokens


def test_summary_rows_noise_row_vote_row_and_all():
    rs = []
    for item in range(4):  # qwen: 3 samples; the vote is right where 2 of 3 are
        answers = ["7", "7", "1"] if item < 3 else ["1", "2", "7"]
        rs += [
            result("single:qwen", "qwen", item, s, a, float(a == "7"))
            for s, a in enumerate(answers)
        ]
        rs.append(result("gated", None, item, 0, "7", 1.0, ttft=0.5, calls=2,
                         gate={"strategy": "alone" if item % 2 else "mix"}, early_exit=item == 0))  # fmt: skip
    rows = {(r.task, r.strategy): r for r in summarize(rs)}
    assert rows[("t", "single:qwen")].accuracy == 0.75  # sample 0: 7, 7, 7, 1
    assert rows[("t", "single:qwen (again)")].accuracy == 0.75
    vote = rows[("t", "vote:qwen x3")]
    assert vote.accuracy == 0.75 and vote.calls == 3 and vote.ttft_p50 is None
    gated = rows[("t", "gated")]
    assert gated.accuracy == 1.0 and gated.calls == 2 and gated.alone == 0.5
    assert gated.early_exits == 0.25 and gated.ttft_p50 == 0.5 and gated.e2e_p50 == 1.0
    assert rows[("all", "gated")].n == 4


def test_pareto_plot_writes_a_png(tmp_path):
    from mixkit.evals.strategies import pareto_plot

    rs = [result("single:qwen", "qwen", i, 0, "7", 1.0, ttft=1.0) for i in range(3)]
    rs += [result("gated", None, i, 0, "1", 0.0, ttft=0.5) for i in range(3)]
    path = pareto_plot(summarize(rs), tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
