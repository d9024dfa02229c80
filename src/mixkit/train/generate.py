"""Sampling text from a checkpoint: the checkpoint folder holds the config, weights and tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from mixkit.errors import ConfigError
from mixkit.models import LanguageModel, build_model
from mixkit.train.checkpoint import load_checkpoint
from mixkit.train.config import config_from_dict
from mixkit.train.tokenizer import Tokenizer, load_tokenizer


def load_model(checkpoint: str | Path) -> tuple[LanguageModel, Tokenizer]:
    """(model in eval mode, tokenizer) from a run folder or a checkpoint folder."""
    ckpt = load_checkpoint(Path(checkpoint))
    cfg = config_from_dict(ckpt.config, f"stored in {ckpt.path}")
    model = build_model(cfg.model)
    ckpt.load_weights(model)
    model.eval()
    return model, load_tokenizer(ckpt.path / "tokenizer.json")


def generate_text(
    checkpoint: str | Path,
    prompt: str = "",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
) -> str:
    """The prompt followed by `max_new_tokens` sampled tokens, decoded."""
    if max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens ({max_new_tokens}) must be >= 0")
    if temperature < 0:
        raise ConfigError(f"--temperature ({temperature}) must be >= 0 (0 is greedy)")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k ({top_k}) must be >= 1")
    model, tokenizer = load_model(checkpoint)
    ids = [int(i) for i in tokenizer.encode(prompt or "\n")]  # an empty prompt starts a new line
    generator = torch.Generator().manual_seed(seed)
    out_BT = model.generate(
        torch.tensor([ids], dtype=torch.long), max_new_tokens, temperature, top_k, generator
    )
    text = tokenizer.decode(out_BT[0].tolist())
    return text if prompt else text[1:]
