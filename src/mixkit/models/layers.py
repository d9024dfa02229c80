"""Pieces a transformer block can be built from besides GPT-2's: RMSNorm and rotary positions.

They follow Llama's definitions (as Hugging Face `transformers` computes them), so that a mixkit
model built with `norm = "rmsnorm"` and `pos = "rope"` has an exact twin in HF and llama.cpp
(see mixkit.convert).

Legend: B batch, N heads, T time, Dh head dim.
"""

from __future__ import annotations

import torch
from torch import nn


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    """LayerNorm (with bias, GPT-2) or RMSNorm (a weight only, Llama)."""
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps)
    return nn.LayerNorm(d_model, eps=eps)


def rope_cos_sin(
    positions_T: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, Dh) of rotary position embeddings, computed in float32 as HF Llama does."""
    inv_freq = 1.0 / (
        theta
        ** (
            torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions_T.device).float()
            / head_dim
        )
    )
    freqs_TH = positions_T.float()[:, None] * inv_freq[None, :]  # (T, Dh/2)
    emb_TD = torch.cat([freqs_TH, freqs_TH], dim=-1)  # (T, Dh)
    return emb_TD.cos().to(dtype), emb_TD.sin().to(dtype)


def apply_rope(x_BNTD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    """Rotate each head's halves (HF's rotate_half layout, not interleaved pairs)."""
    x1, x2 = x_BNTD.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x_BNTD * cos_TD + rotated * sin_TD
