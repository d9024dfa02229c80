"""Checkable offline tasks: seeded reasoning-gym sets, or the user's own JSONL file.

    Task("basic_arithmetic", n=40, seed=0)      # reasoning-gym, scored by its own scorer
    FileTask("my-set.jsonl")                    # one {"question", "expected", "scorer"} per line

A file line's scorer is `exact` (case- and space-insensitive string match), `number` (numeric
match to 1e-6 relative), or a reasoning-gym dataset name, whose own scorer is then used with the
line's `entry` object (as reasoning-gym produced it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixkit.config import read_json_lines
from mixkit.errors import ConfigError
from mixkit.moa.answers import extract_answer, final_answer, normalize_answer

INSTRUCTION = (
    "Solve the problem. End your reply with a last line of the form 'Answer: <final answer>'."
)


@dataclass
class Item:
    """One task instance: the prompt we send, and what scores it."""

    index: int
    prompt: str
    expected: str
    entry: dict[str, Any] = field(default_factory=dict)
    scorer: str = ""  # exact | number | a reasoning-gym dataset name


def _rg_scorer(name: str) -> Any:
    # lazy: reasoning-gym imports every generator (seconds); only when a task is really used
    import reasoning_gym

    try:
        return reasoning_gym.get_score_answer_fn(name)
    except Exception as e:  # reasoning-gym raises plain errors for unknown names
        raise ConfigError(f"unknown reasoning-gym dataset '{name}' as a scorer: {e}") from None


def scored_answer(response: str) -> str | None:
    """The answer a scorer sees: the one extracted from free text, else a reply that is one
    short line as it is (a program agent answers with what its program printed, e.g. 'olleh')."""
    answer = extract_answer(response)
    if answer is None and response.strip() and "\n" not in response.strip():
        answer = response.strip() if len(response.strip()) <= 200 else None
    return answer


def answer_key(response: str) -> str | None:
    """The key two scored replies share when they give the same answer: the final answer (a
    program agent's printed one), else a one-line reply as it is, normalised."""
    return final_answer(response) or normalize_answer(scored_answer(response))


def score_answer(response: str, item: Item) -> float:
    """0..1: the item's scorer applied to the final answer extracted from `response`."""
    answer = scored_answer(response)
    if answer is None:
        return 0.0
    if item.scorer == "exact":
        return float(normalize_answer(answer) == normalize_answer(item.expected))
    if item.scorer == "number":
        try:
            got, want = float(normalize_answer(answer) or "x"), float(item.expected)
        except ValueError:
            return 0.0
        return float(math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))
    return float(_rg_scorer(item.scorer)(answer=answer, entry=item.entry))


class Task:
    """A seeded reasoning-gym dataset with its own scorer."""

    def __init__(self, name: str, n: int, seed: int = 0):
        # lazy: reasoning-gym imports every generator (seconds); only when a task is really used
        import reasoning_gym

        try:
            self.dataset = reasoning_gym.create_dataset(name, size=n, seed=seed)
        except Exception as e:  # reasoning-gym raises plain errors for unknown names
            raise ConfigError(
                f"unknown or invalid reasoning-gym task '{name}' (try basic_arithmetic, chain_sum, gsm_symbolic): {e}"
            ) from None
        self.name, self.n, self.seed = name, n, seed

    def items(self) -> list[Item]:
        return [
            Item(i, f"{e['question'].strip()}\n\n{INSTRUCTION}", str(e["answer"]), e, self.name)
            for i, e in enumerate(self.dataset)
        ]

    def score(self, response: str, item: Item) -> float:
        """reasoning-gym's own score (0..1) of the answer extracted from `response`."""
        answer = scored_answer(response)
        if answer is None:
            return 0.0
        return float(self.dataset.score_answer(answer=answer, entry=item.entry))


class FileTask:
    """A user's checkable set: JSONL, one {"question", "expected", "scorer"[, "entry"]} per line.

    Every line is checked before anything runs; a bad line is a ConfigError naming its number.
    """

    def __init__(self, path: str | Path, n: int | None = None, instruction: bool = True):
        self.path = Path(path)
        self.name = self.path.stem
        self.seed = 0
        self._items = self._read(instruction)[: n or None]
        self.n = len(self._items)

    def _read(self, instruction: bool) -> list[Item]:
        lines = read_json_lines(
            self.path,
            "tasks file",
            "a JSON object with question, expected, scorer",
            hint="check --tasks-file",
        )
        items = [self._item(obj, where, i, instruction) for i, (where, obj) in enumerate(lines)]
        if not items:
            raise ConfigError(f"{self.path}: no tasks in the file (one JSON object per line)")
        return items

    @staticmethod
    def _item(obj: dict[str, Any], where: str, index: int, instruction: bool) -> Item:
        missing = [k for k in ("question", "expected", "scorer") if k not in obj]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        question, scorer = obj["question"], obj["scorer"]
        if not isinstance(question, str) or not question.strip():
            raise ConfigError(f"{where}: question must be a non-empty string")
        if not isinstance(scorer, str) or not scorer:
            raise ConfigError(f"{where}: scorer must be exact, number or a reasoning-gym name")
        entry = obj.get("entry") or {}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: entry must be a JSON object")
        if scorer == "number":
            try:
                float(obj["expected"])
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{where}: expected must be a number for scorer 'number'"
                ) from None
        elif scorer != "exact":
            try:
                _rg_scorer(scorer)  # fails now, naming the dataset, rather than mid-eval
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
            entry = {"question": question, "answer": str(obj["expected"]), **entry}
        prompt = f"{question.strip()}\n\n{INSTRUCTION}" if instruction else question
        return Item(index, prompt, str(obj["expected"]), entry, scorer)

    def items(self) -> list[Item]:
        return list(self._items)

    def score(self, response: str, item: Item) -> float:
        return score_answer(response, item)
