"""A planted routing problem for the gate's tests: half sums, half word reversals, so that an
agent right on one kind only (the fake backend's `solve:add` / `solve:reverse`) is worth routing to."""

from __future__ import annotations

import random

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "piano",
    "lemon",
    "candle",
    "forest",
    "mirror",
]


def add_prompt(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    return f"What is {a} + {b}? Give the sum.", str(a + b)


def reverse_prompt(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS) + rng.choice(WORDS)
    return f"Spell the word '{w}' backwards, letter by letter.", w[::-1]


def planted(n: int, seed: int, unique: bool = False) -> list[tuple[str, str, str]]:
    """(kind, prompt, expected): half sums, half reversals; `unique` draws again on a repeat."""
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        kind = "add" if len(out) % 2 == 0 else "reverse"
        prompt, expected = (add_prompt if kind == "add" else reverse_prompt)(rng)
        if not (unique and any(prompt == p for _, p, _ in out)):
            out.append((kind, prompt, expected))
    return out
