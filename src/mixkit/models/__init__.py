"""Language models built from `mixkit.moe`: the paper's LSTM-MoE-LSTM and an MoE transformer.

Each model reports `num_parameters()` and `active_macs_per_token()` (the paper's ops/timestep),
exposes `aux_loss()` (the MoE balancing losses of the last forward) and `expert_load()`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mixkit.models.base import LanguageModel
from mixkit.models.ffn import DenseFFN, MoESpec
from mixkit.models.lstm_lm import LSTMLM, LSTMLMConfig
from mixkit.models.transformer_lm import TransformerLM, TransformerLMConfig

ModelConfig = Annotated[LSTMLMConfig | TransformerLMConfig, Field(discriminator="arch")]


def build_model(cfg: LSTMLMConfig | TransformerLMConfig) -> LanguageModel:
    """The model a config describes (vocab_size, and block_size for a transformer, must be set)."""
    if cfg.arch == "lstm":
        return LSTMLM(cfg)
    return TransformerLM(cfg)


__all__ = [
    "DenseFFN",
    "LSTMLM",
    "LSTMLMConfig",
    "LanguageModel",
    "ModelConfig",
    "MoESpec",
    "TransformerLM",
    "TransformerLMConfig",
    "build_model",
]
