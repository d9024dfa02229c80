"""A decoder-only, pre-norm transformer language model with an MoE FFN in every n-th block.

    tokens -> tok_emb + pos_emb -> [ x + attn(LN(x)); x + ffn(LN(x)) ] x n_layers -> LN -> softmax

That is GPT-2's block (LayerNorm, learned absolute positions). `norm = "rmsnorm"`,
`pos = "rope"`, `n_kv_heads` (grouped-query attention), `qkv_bias`, `qk_norm` and `head_dim` give
Llama's, Qwen2's and Qwen3's block instead (no position table; rotary positions inside attention), the form that Hugging Face
and llama.cpp MoE models share (see mixkit.convert).

Block i (0-based) gets an MoE FFN when (i + 1) % moe_every == 0 and `moe` is set, else a dense
FFN, so moe_every=2 gives the "every other layer" layout of GShard and Switch.

Legend: B batch, T time, D d_model, N heads, Dh head dim, V vocabulary.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from mixkit.errors import ConfigError
from mixkit.models.base import LanguageModel
from mixkit.models.ffn import ExpertKind, MoESpec, build_ffn
from mixkit.models.layers import apply_rope, make_norm, rope_cos_sin
from mixkit.moe import MoE


class TransformerLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["transformer"] = "transformer"
    vocab_size: int = Field(0, ge=0, description="0: taken from the tokenizer")
    d_model: int = Field(256, ge=1)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    block_size: int = Field(0, ge=0, description="max context; 0: train.seq_len")
    ffn_hidden: int = Field(1024, ge=1, description="hidden width of the dense FFNs")
    expert: ExpertKind = "relu"
    moe: MoESpec | None = None
    moe_every: int = Field(2, ge=1, description="block i is MoE when (i + 1) % moe_every == 0")
    dropout: float = Field(0.0, ge=0, lt=1)
    tie_embeddings: bool = True
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = Field(1e-5, gt=0)
    pos: Literal["learned", "rope"] = Field("learned", description="learned table or rotary")
    rope_theta: float = Field(10000.0, gt=0)
    n_kv_heads: int | None = Field(None, ge=1, description="grouped-query attention; None: n_heads")
    qkv_bias: bool = False
    qk_norm: bool = Field(False, description="RMSNorm on each head's queries and keys (Qwen3)")
    head_dim: int = Field(0, ge=0, description="0: d_model // n_heads")

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerLMConfig:
        if not self.head_dim and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"
            )
        if self.pos == "rope" and self.dh % 2:
            raise ValueError(f"pos 'rope' needs an even head dim, not {self.dh}")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dh(self) -> int:
        """The width of one attention head."""
        return self.head_dim or self.d_model // self.n_heads


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerLMConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.dh
        q_width, kv_width = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        # q, k, v in one matmul: 3 * D outputs, fewer with grouped-query attention
        self.qkv = nn.Linear(cfg.d_model, q_width + 2 * kv_width, bias=cfg.qkv_bias)
        self.proj = nn.Linear(q_width, cfg.d_model, bias=False)
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps)
        self.qk_norm = cfg.qk_norm
        self.dropout = cfg.dropout

    def forward(
        self,
        x_BTD: torch.Tensor,
        kv: KVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Causal self-attention; with `kv`, attend to its past keys/values too and append the new.
        `rope`: (cos, sin) of the new tokens' positions, for rotary positions."""
        B, T, D = x_BTD.shape
        Dh, N, kv_width = self.head_dim, self.n_heads, self.n_kv * self.head_dim
        q, k, v = self.qkv(x_BTD).split([N * Dh, kv_width, kv_width], dim=2)
        q, k, v = q.view(B, T, N, Dh), k.view(B, T, self.n_kv, Dh), v.view(B, T, self.n_kv, Dh)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, N or Nkv, T, Dh)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past = 0
        if kv is not None:
            past = kv.length
            k, v = kv.append(k, v)  # (B, N, past + T, Dh)
        if past == 0:
            mask, causal = None, True
        else:  # new query t sees every past key and the new keys up to itself
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x_BTD.device).tril(past)
            causal = False
        y = F.scaled_dot_product_attention(  # (B, N, T, Dh)
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv != self.n_heads,
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, N * Dh))  # (B, T, D)


class KVCache:
    """One attention layer's keys and values of the tokens seen so far (sampling only)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class Block(nn.Module):
    def __init__(self, cfg: TransformerLMConfig, ffn: nn.Module):
        super().__init__()
        self.ln1 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.ffn = ffn  # a DenseFFN or an MoE layer
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x_BTD: torch.Tensor,
        kv: KVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x_BTD = x_BTD + self.drop(self.attn(self.ln1(x_BTD), kv, rope))
        return x_BTD + self.drop(self.ffn(self.ln2(x_BTD)))


class TransformerLM(LanguageModel):
    def __init__(self, cfg: TransformerLMConfig):
        super().__init__()
        if cfg.vocab_size < 1 or cfg.block_size < 1:
            raise ConfigError("model.vocab_size and model.block_size must be set before building")
        self.cfg = cfg
        D = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, D)
        if cfg.pos == "learned":
            self.pos_emb = nn.Embedding(cfg.block_size, D)
        self.drop = nn.Dropout(cfg.dropout)
        ffns = [
            build_ffn(D, cfg.ffn_hidden, cfg.expert, cfg.moe if self.is_moe_block(i) else None)
            for i in range(cfg.n_layers)
        ]
        self.blocks = nn.ModuleList(Block(cfg, ffn) for ffn in ffns)
        self.ln_f = make_norm(cfg.norm, D, cfg.norm_eps)
        self.lm_head = nn.Linear(D, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # Initialise what this file owns; MoE layers keep their own initialisation.
        moe_owned = {id(m) for f in ffns if hasattr(f, "aux_loss") for m in f.modules()}
        for m in self.modules():
            if id(m) not in moe_owned:
                self._init_weights(m)
        # GPT-2: scale the residual output projections by 1/sqrt(2 * n_layers).
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    @property
    def ffns(self) -> list[nn.Module]:
        return [block.ffn for block in self.blocks]

    def is_moe_block(self, i: int) -> bool:
        return self.cfg.moe is not None and (i + 1) % self.cfg.moe_every == 0

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx_BT: torch.Tensor, cache: list[KVCache] | None = None) -> torch.Tensor:
        """idx_BT (B, T) int64 -> logits (B, T, V). With `cache` (one KVCache per block), idx_BT
        continues the cached tokens: positions start after them, and the cache grows."""
        B, T = idx_BT.shape
        past = cache[0].length if cache else 0
        if past + T > self.cfg.block_size:
            raise ValueError(f"sequence length {past + T} > block_size {self.cfg.block_size}")
        pos_T = torch.arange(past, past + T, device=idx_BT.device)
        x, rope = self.tok_emb(idx_BT), None  # (B, T, D)
        if self.cfg.pos == "learned":
            x = x + self.pos_emb(pos_T)
        else:
            rope = rope_cos_sin(pos_T, self.cfg.dh, self.cfg.rope_theta, x.dtype)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache[i] if cache else None, rope)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def can_cache(self) -> bool:
        """Cached sampling equals recomputing only if every FFN treats each token on its own:
        dense FFNs and dropless token-choice MoE layers (expert choice and capacity limits look
        at the whole batch)."""
        for m in self.modules():  # includes the groups of a HierarchicalMoE
            if isinstance(m, MoE) and (
                m.cfg.router == "expert_choice" or m.cfg.capacity_factor is not None
            ):
                return False
        return True

    def _next_logits(self, new_BT, cache, all_BT):
        # A KV cache while the context fits in block_size. Past it, the absolute positions of the
        # window shift every step, so the last block_size tokens are recomputed from scratch.
        bs = self.cfg.block_size
        if cache is not None and cache[0].length + new_BT.shape[1] <= bs:
            return self(new_BT, cache)[:, -1, :], cache
        window_BT = all_BT[:, -bs:]
        if not self.can_cache() or all_BT.shape[1] > bs:
            return self(window_BT)[:, -1, :], None
        cache = [KVCache() for _ in self.blocks]
        return self(window_BT, cache)[:, -1, :], cache

    def macs_breakdown(self) -> dict[str, int]:
        c = self.cfg
        D, T = c.d_model, c.block_size
        # Per token per layer: qkv + output projection, plus QK^T and AV at full context (the
        # nanoGPT/PaLM convention, an upper bound for a causal mask).
        q = c.n_heads * c.dh  # = D unless head_dim says otherwise
        qkv = D * (q + 2 * c.kv_heads * c.dh)  # 3 * D * D without grouped-query attention
        attn = c.n_layers * (qkv + q * D + 2 * T * q)
        ffn = sum(int(f.active_macs_per_token()) for f in self.ffns)
        return {"embedding": 0, "attention": attn, "ffn": ffn, "softmax": D * c.vocab_size}
