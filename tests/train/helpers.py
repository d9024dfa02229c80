"""Test helpers: a small generated corpus, the tiny preset pointed at it, the real CLI."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from mixkit.train import load_config

SYLLABLES = "ro me ju li et ham let king lear mac beth o the lo ve".split()


def write_corpus(path: Path, n_lines: int = 1500, seed: int = 0) -> Path:
    """Pseudo-verse with repeated words and speaker names: learnable, ~60 KB."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(120)]
    speakers = ["ROMEO", "JULIET", "HAMLET", "LEAR"]
    lines = []
    for i in range(n_lines):
        if i % 6 == 0:
            lines.append(f"{rng.choice(speakers)}:")
        lines.append(" ".join(rng.choices(words[: 20 + (i % 100)], k=rng.randint(4, 9))) + ",")
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def tiny_overrides(corpus: Path, **fields) -> list[str]:
    """--set items: the corpus path plus fields given as train__steps=20 (__ for dots)."""
    sets = [f"data.path='{corpus}'"]
    for key, value in fields.items():
        if isinstance(value, bool):
            shown = str(value).lower()
        elif isinstance(value, str):
            shown = f"'{value}'"
        else:
            shown = value
        sets.append(f"{key.replace('__', '.')}={shown}")
    return sets


def tiny_config(corpus: Path, **fields):
    return load_config("tiny", overrides=tiny_overrides(corpus, **fields))


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `mixkit` entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-c", "from mixkit.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
