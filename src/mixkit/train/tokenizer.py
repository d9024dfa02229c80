"""Tokenizers: raw UTF-8 bytes (vocab 256), or a byte-level BPE trained with HF `tokenizers`.

Both save to and load from one JSON file, so a checkpoint carries its own tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mixkit.errors import DataError


class ByteTokenizer:
    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"mixkit_tokenizer": "byte"}), "utf-8")


class BPETokenizer:
    kind = "bpe"

    def __init__(self, tok):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import (  # lazy: the HF tokenizers library, only for the bpe tokenizer
            Tokenizer,
            decoders,
            models,
            pre_tokenizers,
            trainers,
        )

        tok = Tokenizer(models.BPE())
        # Byte-level: every string is encodable, nothing is ever unknown.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> np.ndarray:
        # Encode line batches: one huge string is slow in the pre-tokenizer and memory hungry.
        lines = text.splitlines(keepends=True)
        out: list[int] = []
        for i in range(0, len(lines), 4096):
            for enc in self._tok.encode_batch(lines[i : i + 4096]):
                out.extend(enc.ids)
        return np.asarray(out, dtype=np.uint16)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def save(self, path: Path) -> None:
        path.write_text(self._tok.to_str(), "utf-8")


Tokenizer = ByteTokenizer | BPETokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        raw = json.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read tokenizer {str(path)!r}: {e}") from None
    if raw.get("mixkit_tokenizer") == "byte":
        return ByteTokenizer()
    try:
        from tokenizers import Tokenizer as HFTokenizer  # lazy: see train()

        return BPETokenizer(HFTokenizer.from_str(json.dumps(raw)))
    except Exception as e:  # tokenizers raises its own exception type
        raise DataError(f"tokenizer {str(path)!r} is corrupt: {e}") from None
