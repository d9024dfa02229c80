"""Stacked expert weights and the grouped FFN that runs them.

Legend: A assignments (tokens sorted by expert), D d_model, H d_hidden, E experts.

Experts hold one parameter per matrix with a leading expert dimension (w_in (E, D, H),
w_out (E, H, D), and w_gate (E, D, H) for SwiGLU), so an optimizer, a checkpoint or an
expert-parallel shard sees E experts as a few tensors.

The grouped FFN takes tokens already sorted by expert plus per-expert counts. Three paths:
- "fused" (default off CUDA): one autograd Function that loops over experts with `mm(out=...)`
  into preallocated buffers and writes weight gradients straight into stacked buffers
  (see grouped.py). Fastest on CPU.
- "loop": plain autograd, kept because it is obviously right. Split the tokens by count and `unbind` the weights once, then one matmul per expert.
  Indexing `w_in[e]` inside the loop would make autograd allocate a full (E, D, H) gradient per
  expert in backward (measured 17x slower at E=64); `unbind` builds one stacked gradient.
- "grouped_mm": `torch._grouped_mm` (one kernel for all experts) where it exists and supports the
  device and dtype; used on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixkit.moe.grouped import GroupedReluFFN, GroupedSwiGLUFFN


class Experts(nn.Module):
    def __init__(self, num_experts: int, d_model: int, d_hidden: int, kind: str = "relu") -> None:
        super().__init__()
        self.num_experts, self.d_model, self.d_hidden, self.kind = (
            num_experts,
            d_model,
            d_hidden,
            kind,
        )
        E, D, H = num_experts, d_model, d_hidden
        self.w_in = nn.Parameter(torch.randn(E, D, H) * D**-0.5)
        self.w_gate = nn.Parameter(torch.randn(E, D, H) * D**-0.5) if kind == "swiglu" else None
        self.w_out = nn.Parameter(torch.randn(E, H, D) * H**-0.5)

    def macs_per_assignment(self) -> int:
        return (3 if self.kind == "swiglu" else 2) * self.d_model * self.d_hidden

    def forward(
        self,
        x_AD: torch.Tensor,
        counts: list[int],
        impl: str = "auto",
        scale_A: torch.Tensor | None = None,
        source: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x_AD sorted by expert, counts[e] rows for expert e -> (A, D), each row times scale_A.

        source: (x_TD, token_A) when x_AD = x_TD[token_A]; the fused path then keeps x_TD for
        backward instead of the k-times-larger x_AD."""
        if scale_A is None:
            scale_A = x_AD.new_ones(x_AD.shape[0])
        if impl == "auto":
            impl = "grouped_mm" if _grouped_mm_ok(x_AD) else "fused"
        scale_A1 = scale_A.to(x_AD.dtype).unsqueeze(-1)
        if impl == "grouped_mm":
            return self._forward_grouped_mm(x_AD, counts) * scale_A1
        if impl == "fused":
            if self.w_gate is not None:
                return GroupedSwiGLUFFN.apply(
                    x_AD, scale_A, self.w_gate, self.w_in, self.w_out, counts, source
                )
            return GroupedReluFFN.apply(x_AD, scale_A, self.w_in, self.w_out, counts, source)
        if impl == "loop":
            return self._forward_loop(x_AD, counts) * scale_A1
        raise ValueError(
            f"expert_impl ({impl!r}) is unknown; choose auto, fused, loop or grouped_mm"
        )

    def forward_dense(self, x_TD: torch.Tensor, expert: int) -> torch.Tensor:
        """One expert on all tokens (used by shared experts and the reference)."""
        h = x_TD @ self.w_in[expert]
        if self.w_gate is not None:
            h = F.silu(x_TD @ self.w_gate[expert]) * h
        else:
            h = F.relu(h)
        return h @ self.w_out[expert]

    def _forward_loop(self, x_AD: torch.Tensor, counts: list[int]) -> torch.Tensor:
        xs = x_AD.split(counts, dim=0)
        w_in, w_out = self.w_in.unbind(0), self.w_out.unbind(0)
        w_gate = self.w_gate.unbind(0) if self.w_gate is not None else None
        outs = []
        for e, x_e in enumerate(xs):
            if x_e.shape[0] == 0:
                continue
            h = x_e @ w_in[e]  # (n_e, H)
            h = F.silu(x_e @ w_gate[e]) * h if w_gate is not None else F.relu(h)
            outs.append(h @ w_out[e])  # (n_e, D)
        if not outs:
            return x_AD.new_zeros(x_AD.shape) + 0.0 * self.w_out.sum()
        return torch.cat(outs, dim=0)

    def _forward_grouped_mm(self, x_AD: torch.Tensor, counts: list[int]) -> torch.Tensor:
        offs = torch.tensor(counts, device=x_AD.device).cumsum(0).to(torch.int32)
        h = torch._grouped_mm(x_AD, self.w_in, offs=offs)
        if self.w_gate is not None:
            h = F.silu(torch._grouped_mm(x_AD, self.w_gate, offs=offs)) * h
        else:
            h = F.relu(h)
        return torch._grouped_mm(h, self.w_out, offs=offs)


def _grouped_mm_ok(x: torch.Tensor) -> bool:
    # bf16 on CUDA is the combination torch._grouped_mm is built for; everything else takes the loop.
    return x.is_cuda and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
