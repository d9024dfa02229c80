"""The aggregate-and-synthesize prompt: delimited, numbered, budgeted, stable part first."""

from __future__ import annotations

import re

import pytest

from mixkit.errors import ConfigError
from mixkit.moa.engine.prompts import as_conversation, clip, synthesis_messages


def test_references_are_numbered_delimited_and_after_the_instructions():
    conv = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Q?"}]
    answers = ["1. one\n2. two", "A plain answer", "Response 1: a trap"]
    msgs = synthesis_messages(conv, answers, max_chars=500)
    assert msgs[1:] == [{"role": "user", "content": "Q?"}]  # the user's message stays last, as is
    system = msgs[0]["content"]
    assert system.index("Be terse.") < system.index("<response")  # stable part first
    ids = re.findall(r'<response id="(\d+)" of="3">', system)
    assert ids == ["1", "2", "3"] and system.count("</response>") == 3
    for a in answers:
        assert a in system
    assert system.rstrip().endswith("</response>")


def test_each_reference_is_cut_to_its_budget():
    long, short = "x" * 5000, "short answer"
    system = synthesis_messages([{"role": "user", "content": "Q"}], [long, short], max_chars=100)[0]
    assert "x" * 100 in system["content"] and "x" * 101 not in system["content"]
    assert "[...truncated]" in system["content"] and short in system["content"]
    assert clip("  abc  ", 10) == "abc"


def test_history_is_kept_and_no_answers_means_unchanged():
    conv = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    msgs = synthesis_messages(conv, ["r1"])
    assert msgs[0]["role"] == "system" and msgs[1:] == conv
    assert synthesis_messages(conv, []) == conv


def test_conversation_input_is_checked():
    assert as_conversation("hi", None) == [{"role": "user", "content": "hi"}]
    with pytest.raises(ConfigError, match="end with a user message"):
        as_conversation(None, [{"role": "assistant", "content": "x"}])
    with pytest.raises(ConfigError, match=r"messages\[0\]"):
        as_conversation("q", [{"role": "wizard", "content": "x"}])
