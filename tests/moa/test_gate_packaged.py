"""The packaged gate of the `gated` preset (`make run`, `mixkit serve`): free-text questions go to
the text agent, answered in prose; arithmetic and letter counts go to the program agent.

Decisions only: the gate is a few dot products over text features, no model is called.
"""

from __future__ import annotations

import pytest

from mixkit.cli.moa import DEFAULT_QUESTION
from mixkit.evals.tasks import INSTRUCTION
from mixkit.moa import load_preset
from mixkit.moa.gate.model import load
from mixkit.moa.gate.plan import plan_run

# None of these is in the gate's training data (bench/data/gate-*.jsonl).
FREE_TEXT = [
    DEFAULT_QUESTION,  # `make run`'s question
    "Explain in a few sentences how a bicycle stays upright.",
    "Write a short thank-you note to a colleague who helped me move house.",
    "What are good habits for keeping a small garden healthy?",
    "Tell me about the history of tea in two paragraphs.",
]
CHECKABLE = [
    f"Calculate 4821 * 37 - 1290 + 15.\n\n{INSTRUCTION}",
    f"Calculate ( -318 + 77 ) * 12.\n\n{INSTRUCTION}",
    f'How many times does the letter "r" appear in the text: "the rapid river runs far"?\n\n{INSTRUCTION}',
]


@pytest.fixture(scope="module")
def gated():
    config = load_preset("gated")
    assert config.gate is not None and config.gate.path == "default"
    return config, load(config.gate.path)


def test_the_gated_preset_offers_words_and_programs(gated):
    config, gate = gated
    kinds = {name: config.agents[name].kind for name in config.layers[0].agents}
    assert "program" in kinds.values() and "text" in kinds.values()
    assert set(config.layers[0].agents) <= set(gate.agents)
    assert gate.expected_latency("qwen-program") > gate.expected_latency("qwen") > 0


@pytest.mark.parametrize("prompt", FREE_TEXT)
def test_free_text_goes_to_a_text_agent_alone(gated, prompt):
    config, gate = gated
    plan = plan_run(config, gate, prompt, noise=0.0)
    assert plan.alone is not None, plan.decision
    assert config.agents[plan.alone].kind == "text" and plan.alone == "qwen", plan.decision


@pytest.mark.parametrize("prompt", CHECKABLE)
def test_arithmetic_and_letter_counts_go_to_the_program_agent(gated, prompt):
    config, gate = gated
    plan = plan_run(config, gate, prompt, noise=0.0)
    assert plan.alone == "qwen-program", plan.decision
