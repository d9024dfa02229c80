"""reasoning-gym tasks: seeded, scored by their own scorer, answers extracted from free text."""

from __future__ import annotations

import pytest

from mixkit.errors import ConfigError
from mixkit.evals import Task, extract_answer, systems_of
from mixkit.moa import load_preset


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the total is 12.\nAnswer: 42", "42"),
        ("Answer: 5 - 3 - 6 = -4.", "-4"),
        ("**Answer:** **-17**", "-17"),
        ("answer is: 3", "3"),
        ("I think it is 7, no, 9", "9"),
        ("no idea", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_tasks_are_seeded_and_score_their_own_answers():
    a, b = Task("basic_arithmetic", n=5, seed=3), Task("basic_arithmetic", n=5, seed=3)
    assert [i.prompt for i in a.items()] == [i.prompt for i in b.items()]
    assert [i.prompt for i in a.items()] != [
        i.prompt for i in Task("basic_arithmetic", n=5, seed=4).items()
    ]
    for item in a.items():
        assert a.score(f"work...\nAnswer: {item.expected}", item) == 1.0
        assert a.score("Answer: not a number", item) < 1.0
        assert a.score("", item) == 0.0


def test_unknown_task_is_a_config_error():
    with pytest.raises(ConfigError, match="reasoning-gym task 'no_such_task'"):
        Task("no_such_task", n=1)


def test_systems_are_the_moa_and_each_agent_alone():
    cfg = load_preset("moa-lite")
    systems = systems_of(cfg)
    assert systems[0][1] is cfg
    singles = [s for _, s in systems[1:]]
    assert len(singles) == len(cfg.agents)
    assert all(s.layers == [] and len(s.agents) == 1 for s in singles)
