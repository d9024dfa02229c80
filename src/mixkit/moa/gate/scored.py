"""Scored calls: what a gate learns from (an agent's answer to a prompt, and how good it was)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mixkit.config import read_json_lines
from mixkit.errors import ConfigError


@dataclass
class ScoredCall:
    """One training record: an agent's answer to a prompt, and its score."""

    prompt: str
    agent: str
    score: float  # 0..1 (reasoning-gym's partial credit, or exact-match 0/1)
    answer: str | None = None  # the normalised final answer (for majority votes)
    task: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None  # seconds from the call to its answer (the cost term's time)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> ScoredCall:
        try:
            return cls(
                prompt=str(d["prompt"]),
                agent=str(d["agent"]),
                score=float(d["score"]),
                answer=None if d.get("answer") is None else str(d["answer"]),
                task=str(d.get("task") or ""),
                prompt_tokens=d.get("prompt_tokens"),
                completion_tokens=d.get("completion_tokens"),
                latency_s=None if d.get("latency_s") is None else float(d["latency_s"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"{where}: a scored call needs prompt, agent and a numeric score ({e!r})"
            ) from None


def read_jsonl(path: str | Path) -> list[ScoredCall]:
    """Scored calls from a JSONL file: one {"prompt", "agent", "score", ...} object per line."""
    lines = read_json_lines(
        path, "scored-calls file", 'a JSON object with "prompt", "agent", "score"'
    )
    return [ScoredCall.from_dict(obj, where) for where, obj in lines]
