"""Final answers in free text: extract them, normalise them, and tell whether answers agree
(`agreement`, which early exit uses).

Used where the engine must compare proposals without an LLM: majority votes (the gate's `vote`
combiner) and early exit on agreement. Evals score the same extracted answers.
"""

from __future__ import annotations

import re

from mixkit.moa.config import EarlyExitConfig

_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORDS = re.compile(r"[a-z0-9]+")


def extract_answer(response: str) -> str | None:
    """The final answer in a reply: the last 'Answer: X' line, else the last number."""
    matches = _ANSWER_LINE.findall(response)
    if matches:
        answer = matches[-1].strip()
    else:
        numbers = _NUMBER.findall(response)
        if not numbers:
            return None
        answer = numbers[-1]
    while (nested := _ANSWER_LINE.match(answer)) is not None:  # "Answer: answer: 47"
        answer = nested.group(1).strip()
    if "=" in answer:  # "Answer: 5 - 3 - 6 = -4" -> "-4"
        answer = answer.rsplit("=", 1)[1]
    answer = answer.replace("**", "").strip().strip("`$ ").rstrip(".")
    return answer or None


def normalize_answer(answer: str | None) -> str | None:
    """A canonical form for comparing answers: case, spaces, thousands separators, '5.0' == '5'."""
    if answer is None:
        return None
    text = answer.strip().lower().replace(",", "").strip("\"'` ")
    text = re.sub(r"\s+", " ", text)
    try:
        value = float(text)
    except ValueError:
        return text or None
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def final_answer(response: str) -> str | None:
    """extract + normalise: the key two proposals must share to count as agreeing. A program
    agent's answer (agents/program.ProgramAnswer) brings its own key."""
    key = getattr(response, "answer_key", None)
    if key is not None:
        return str(key)
    return normalize_answer(extract_answer(response))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' word sets (free-text agreement), in [0, 1]."""
    wa, wb = set(_WORDS.findall(a.lower())), set(_WORDS.findall(b.lower()))
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def agreement(answers: list[str], rule: EarlyExitConfig) -> int | None:
    """Index of the first proposal that at least `rule.min_agree` proposals (itself included)
    agree with: the same final answer where one can be extracted, else similar text."""
    keys = [final_answer(a) for a in answers]
    for i, a in enumerate(answers):
        if keys[i] is not None:
            agree = sum(k == keys[i] for k in keys)
        else:
            agree = sum(
                keys[j] is None and similarity(a, b) >= rule.similarity
                for j, b in enumerate(answers)
            )
        if agree >= rule.min_agree:
            return i
    return None
