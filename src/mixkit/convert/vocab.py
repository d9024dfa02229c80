"""mixkit's tokenizers as Hugging Face `tokenizers` files and as GGUF vocabularies.

mixkit's byte tokenizer (token id = the UTF-8 byte) is a byte-level BPE with no merges whose
vocabulary is the 256 byte symbols of GPT-2's byte-to-unicode table, in byte order: the same ids
for every text, in HF `tokenizers` and in llama.cpp (a "gpt2" model). A BPE tokenizer is already
a `tokenizers` file (byte level, GPT-2's pre-tokenizer) and goes through as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mixkit.errors import DataError

BYTE_MARKER = {"mixkit_tokenizer": "byte"}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte to a printable character (the byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer_json() -> dict[str, Any]:
    """mixkit's byte tokenizer as a `tokenizers` JSON (a byte-level BPE without merges)."""
    vocab = {char: b for b, char in bytes_to_unicode().items()}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {**byte_level, "use_regex": False},
        "post_processor": None,
        "decoder": {**byte_level, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        raw = json.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read {what} {str(path)!r}: {e}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{what} {str(path)!r} is not a JSON object")
    return raw


def is_byte_tokenizer(raw: dict[str, Any]) -> bool:
    return raw.get("mixkit_tokenizer") == "byte"


def hf_tokenizer_json(tokenizer_path: Path) -> tuple[dict[str, Any], bool]:
    """(the `tokenizers` JSON of a mixkit tokenizer file, whether it is the byte tokenizer)."""
    raw = read_json(tokenizer_path, "tokenizer")
    if is_byte_tokenizer(raw):
        return byte_tokenizer_json(), True
    return raw, False


def bpe_vocab(tok: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(tokens in id order, merges as "a b" strings) of a byte-level BPE `tokenizers` JSON."""
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise DataError(
            f"the tokenizer is a {model.get('type')!r} model; only byte-level BPE tokenizers "
            "(mixkit's byte and bpe tokenizers) export to GGUF"
        )
    by_id = {int(i): t for t, i in model["vocab"].items()}
    by_id.update({int(a["id"]): a["content"] for a in tok.get("added_tokens") or []})
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError("the tokenizer's ids are not 0..N-1 without gaps")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return [by_id[i] for i in range(len(by_id))], merges
