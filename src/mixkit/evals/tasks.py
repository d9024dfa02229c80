"""Checkable offline tasks from `reasoning-gym`: seeded question sets, answer extraction, scoring."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mixkit.errors import ConfigError

INSTRUCTION = (
    "Solve the problem. End your reply with a last line of the form 'Answer: <final answer>'."
)
_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Item:
    """One task instance: the prompt we send, and the reasoning-gym entry that scores it."""

    index: int
    prompt: str
    expected: str
    entry: dict[str, Any]


class Task:
    """A seeded reasoning-gym dataset with its own scorer."""

    def __init__(self, name: str, n: int, seed: int = 0):
        import reasoning_gym  # lazy: a heavy import, needed only when a task is built

        try:
            self.dataset = reasoning_gym.create_dataset(name, size=n, seed=seed)
        except Exception as e:  # reasoning-gym raises plain errors for unknown names
            raise ConfigError(
                f"unknown or invalid reasoning-gym task '{name}' (try basic_arithmetic, chain_sum, gsm_symbolic): {e}"
            ) from None
        self.name, self.n, self.seed = name, n, seed

    def items(self) -> list[Item]:
        return [
            Item(i, f"{e['question'].strip()}\n\n{INSTRUCTION}", str(e["answer"]), e)
            for i, e in enumerate(self.dataset)
        ]

    def score(self, response: str, item: Item) -> float:
        """reasoning-gym's own score (0..1) of the answer extracted from `response`."""
        answer = extract_answer(response)
        if answer is None:
            return 0.0
        return float(self.dataset.score_answer(answer=answer, entry=item.entry))


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
    if "=" in answer:  # "Answer: 5 - 3 - 6 = -4" -> "-4"
        answer = answer.rsplit("=", 1)[1]
    answer = answer.replace("**", "").strip().strip("`$ ").rstrip(".")
    return answer or None
