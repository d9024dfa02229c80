"""What every mixkit language model shares: aux loss, MoE stats, size and cost reports, sampling.

Legend: B batch, T time, V vocabulary, D d_model.
"""

from __future__ import annotations

import torch
from torch import nn


class LanguageModel(nn.Module):
    """Base class. Subclasses build `self.ffns` (dense FFNs or MoE layers) and implement
    `forward(idx_BT) -> logits_BTV`, `macs_breakdown()` and `_next_logits`."""

    ffns: nn.ModuleList | list[nn.Module]  # the FFN slot of each layer, dense or MoE

    # --- MoE bookkeeping -------------------------------------------------------------------
    def moe_layers(self) -> list[tuple[str, nn.Module]]:
        """(name, layer) of every MoE layer, in depth order; dense FFNs are left out."""
        return [(f"ffn{i}", m) for i, m in enumerate(self.ffns) if hasattr(m, "aux_loss")]

    def aux_loss(self) -> torch.Tensor:
        """Sum of the weighted balancing losses of the last forward (0 for a dense model)."""
        total = torch.zeros((), device=self.lm_head.weight.device)
        for _, layer in self.moe_layers():
            aux = layer.aux_loss
            if aux is not None:
                total = total + aux
        return total

    def expert_load(self) -> dict[str, torch.Tensor]:
        """tokens_per_expert (E,) of the last forward for every MoE layer."""
        out = {}
        for name, layer in self.moe_layers():
            tpe = getattr(getattr(layer, "last_stats", None), "tokens_per_expert", None)
            if tpe is not None:
                out[name] = torch.as_tensor(tpe).detach().float().cpu()
        return out

    # --- size and cost ---------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameters (tied weights counted once). `exclude_embeddings` drops the token/position
        embeddings and the softmax, as the paper's tables do."""
        seen, n = set(), 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.lm_head.weight is not self.tok_emb.weight:
                n -= self.lm_head.weight.numel()
            pos = getattr(self, "pos_emb", None)
            if pos is not None:
                n -= pos.weight.numel()
        return n

    def macs_breakdown(self) -> dict[str, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def active_macs_per_token(self, include_softmax: bool = True) -> int:
        """Multiply-adds executed per token in a forward pass (the paper's ops/timestep).
        MoE layers count the router plus the k experts actually used, not all E."""
        parts = self.macs_breakdown()
        return sum(v for k, v in parts.items() if include_softmax or k != "softmax")

    # --- sampling --------------------------------------------------------------------------
    def _next_logits(self, new_BT: torch.Tensor, cache, all_BT: torch.Tensor):  # pragma: no cover
        """Logits (B, V) for the token after all_BT. `new_BT` are the tokens not yet seen by
        `cache` (a model may ignore the cache and recompute from all_BT)."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        idx_BT: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append `max_new_tokens` sampled tokens to idx_BT; temperature 0 is greedy."""
        was_training = self.training
        self.eval()
        cache = None
        new_BT = idx_BT  # the tokens not yet fed to the model
        out = idx_BT
        for _ in range(max_new_tokens):
            logits_BV, cache = self._next_logits(new_BT, cache, out)
            if temperature <= 0:
                nxt_B1 = logits_BV.argmax(dim=-1, keepdim=True)
            else:
                logits_BV = logits_BV / temperature
                if top_k is not None and top_k < logits_BV.size(-1):
                    kth = torch.topk(logits_BV, top_k, dim=-1).values[:, -1:]  # (B, 1)
                    logits_BV = logits_BV.masked_fill(logits_BV < kth, float("-inf"))
                probs_BV = torch.softmax(logits_BV, dim=-1)
                nxt_B1 = torch.multinomial(probs_BV, 1, generator=generator)
            out = torch.cat([out, nxt_B1], dim=1)
            new_BT = nxt_B1
        self.train(was_training)
        return out
