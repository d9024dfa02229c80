"""The mixkit side of a conversion: reading a trained model from a run, writing one as a run that
`mixkit train --resume` continues, and an output that is all there or not there at all.

A converted or upcycled model is written as a run folder whose checkpoint is at step 0 with a
fresh optimizer, so `mixkit train --resume --out OUT --steps N` trains it on (expert parallel
too: it is a plain mixkit checkpoint) and nothing else in mixkit needs to know where it came from.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mixkit.errors import ConfigError, DataError
from mixkit.models import TransformerLM, build_model
from mixkit.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from mixkit.train.config import RunConfig, config_from_dict
from mixkit.train.data import prepare_corpus
from mixkit.train.optim import make_optimizer


@dataclass
class MixkitRun:
    """A mixkit model with what travels with it."""

    model: TransformerLM
    cfg: RunConfig
    tokenizer_path: Path  # its tokenizer.json (mixkit's byte marker or an HF tokenizers file)
    fingerprint: str | None  # the data fingerprint of the run it came from, when known


def is_mixkit_run(path: Path) -> bool:
    return find_checkpoint(path) is not None and (find_checkpoint(path) / "train_state.pt").exists()


def load_run(path: Path) -> MixkitRun:
    """The transformer LM of a run folder or checkpoint folder, in eval mode."""
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt.config, f"stored in {ckpt.path}")
    if cfg.model.arch != "transformer":
        raise ConfigError(
            f"{str(path)!r} holds an LSTM language model (model.arch 'lstm'); only transformer "
            "models convert (Hugging Face, llama.cpp and upcycling are transformer formats)"
        )
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    ckpt.load_weights(model)
    model.eval()
    assert isinstance(model, TransformerLM)
    fingerprint = ckpt.train_state.get("data_fingerprint")
    return MixkitRun(model, cfg, ckpt.path / "tokenizer.json", fingerprint)


def write_run(out_dir: Path, run: MixkitRun) -> Path:
    """Write `run` as a mixkit run at step 0 (fresh optimizer) under out_dir/checkpoint/.

    The data fingerprint is the one `mixkit train` will compute for run.cfg.data (read from the
    data now unless the run already knows it), so that --resume accepts the checkpoint."""
    fingerprint = run.fingerprint
    tokenizer_path = run.tokenizer_path
    if fingerprint is None:
        corpus = prepare_corpus(run.cfg.data)
        if corpus.tokenizer.vocab_size > run.cfg.model.vocab_size:
            raise ConfigError(
                f"the tokenizer has {corpus.tokenizer.vocab_size} tokens but the model only "
                f"{run.cfg.model.vocab_size}"
            )
        fingerprint, tokenizer_path = corpus.fingerprint, corpus.tokenizer_path
    optimizer = make_optimizer(run.model, run.cfg.optim)
    state = {
        "step": 0,
        "data_position": {"step": 0, "sample": 0, "epoch": 0},
        "data_fingerprint": fingerprint,
        "world_size": 1,
        "expert_parallel": 1,
    }
    return save_checkpoint(out_dir, run.model, optimizer, state, run.cfg.to_dict(), tokenizer_path)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary path next to `out`, renamed to `out` when the block succeeds and removed when
    it fails, so that a failed conversion leaves nothing half-written at `out`."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{str(out)!r} already exists; choose another output or delete it")
    if not out.parent.is_dir():
        raise ConfigError(f"the folder of the output {str(out)!r} does not exist")
    tmp = out.with_name(f".{out.name}.partial")
    _remove(tmp)
    try:
        yield tmp
        tmp.rename(out)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def require_exists(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} does not exist")
    return path
