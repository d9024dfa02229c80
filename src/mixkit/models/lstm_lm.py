"""The LSTM language model of Shazeer et al. 2017 (section 5.1), at any size.

    tokens -> Embedding -> LSTM -> FFN slot -> LSTM -> softmax
                           (+res)   (+res)     (+res)

The FFN slot holds an MoE layer (applied "convolutionally": to every timestep independently) or,
for the baseline, a dense FFN. Residual connections go around each LSTM and the FFN slot, and
dropout is applied to every residual branch, as in the paper.

Legend: B batch, T time, D d_model (= LSTM width), V vocabulary.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mixkit.errors import ConfigError
from mixkit.models.base import LanguageModel
from mixkit.models.ffn import ExpertKind, MoESpec, build_ffn


class LSTMLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["lstm"] = "lstm"
    vocab_size: int = Field(0, ge=0, description="0: taken from the tokenizer")
    d_model: int = Field(256, ge=1)
    ffn_hidden: int = Field(512, ge=1, description="hidden width of the dense FFN (no moe)")
    expert: ExpertKind = "relu"
    moe: MoESpec | None = None
    dropout: float = Field(0.1, ge=0, lt=1)
    tie_embeddings: bool = True


class LSTMLM(LanguageModel):
    def __init__(self, cfg: LSTMLMConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ConfigError("model.vocab_size must be set before building (the tokenizer's)")
        self.cfg = cfg
        D = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, D)
        self.lstm1 = nn.LSTM(D, D, batch_first=True)
        self.ffns = nn.ModuleList([build_ffn(D, cfg.ffn_hidden, cfg.expert, cfg.moe)])
        self.lstm2 = nn.LSTM(D, D, batch_first=True)
        self.norm = nn.LayerNorm(D)  # keeps the softmax input scale stable across the residual sum
        self.drop = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(D, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    def _body(self, idx_BT: torch.Tensor, state=None):
        s1, s2 = state if state is not None else (None, None)
        x = self.drop(self.tok_emb(idx_BT))  # (B, T, D)
        h, s1 = self.lstm1(x, s1)  # (B, T, D)
        x = x + self.drop(h)
        x = x + self.drop(self.ffns[0](x))  # (B, T, D), each timestep routed on its own
        h, s2 = self.lstm2(x, s2)
        x = x + self.drop(h)
        return self.lm_head(self.norm(x)), (s1, s2)  # (B, T, V)

    def forward(self, idx_BT: torch.Tensor) -> torch.Tensor:
        """idx_BT (B, T) int64 -> logits (B, T, V)."""
        return self._body(idx_BT)[0]

    def _next_logits(self, new_BT, cache, all_BT):
        logits_BTV, cache = self._body(new_BT, cache)  # the LSTM state carries the whole context
        return logits_BTV[:, -1, :], cache

    def macs_breakdown(self) -> dict[str, int]:
        D, V = self.cfg.d_model, self.cfg.vocab_size
        lstm = 4 * (D * D + D * D)  # 4 gates, each input->hidden and hidden->hidden
        return {
            "embedding": 0,  # a lookup
            "lstm": 2 * lstm,
            "ffn": int(self.ffns[0].active_macs_per_token()),
            "softmax": D * V,
        }
