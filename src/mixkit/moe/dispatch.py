"""Dispatch and combine: move tokens to their experts and the results back.

Legend: T tokens, D d_model, E experts, A assignments (before capacity), S kept assignments.

    x_SD, counts, plan = dispatcher.dispatch(x_TD, decision, capacity)
    out_SD = experts(x_SD, counts, scale_A=plan.weight_S)   # local tensors and counts only
    y_TD = dispatcher.combine(out_SD, plan)

The local dispatcher sorts assignments by expert (stable, so the router's priority order, first
choices before second choices, survives within each expert), drops those past capacity, and
gathers the kept tokens. The experts scale each result by its gate weight (their backward can
then get the gate's gradient without keeping the unscaled output), and combine() sums each result
back into its token. An expert-parallel dispatcher plugs in behind the same two methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mixkit.moe.routing import RoutingDecision


@dataclass
class DispatchPlan:
    token_idx_S: torch.Tensor  # (S,) token of each kept assignment, sorted by expert
    weight_S: torch.Tensor  # (S,) its gate weight
    counts_E: torch.Tensor  # (E,) kept assignments per expert
    num_tokens: int
    num_assignments: int  # A, before capacity
    num_dropped: int


class LocalDispatcher:
    def __init__(self, num_experts: int):
        self.num_experts = num_experts

    def dispatch(
        self, x_TD: torch.Tensor, decision: RoutingDecision, capacity: int | None
    ) -> tuple[torch.Tensor, list[int], DispatchPlan]:
        E = self.num_experts
        expert_idx_A = decision.expert_idx_A
        A = expert_idx_A.numel()
        if decision.expert_choice:  # already expert-major, and exactly C per expert
            order_A = None
            expert_sorted_A = expert_idx_A
        else:
            order_A = torch.argsort(expert_idx_A, stable=True)
            expert_sorted_A = expert_idx_A[order_A]
        counts_E = torch.bincount(expert_idx_A, minlength=E)
        token_S = decision.token_idx_A if order_A is None else decision.token_idx_A[order_A]
        weight_S = decision.weight_A if order_A is None else decision.weight_A[order_A]
        num_dropped = 0
        if capacity is not None and not decision.expert_choice and int(counts_E.max()) > capacity:
            starts_E = counts_E.cumsum(0) - counts_E
            position_A = torch.arange(A, device=x_TD.device) - starts_E[expert_sorted_A]
            keep_A = position_A < capacity
            token_S, weight_S = token_S[keep_A], weight_S[keep_A]
            kept_E = counts_E.clamp(max=capacity)
            num_dropped = int((counts_E - kept_E).sum())
            counts_E = kept_E
        x_SD = x_TD.index_select(0, token_S)
        plan = DispatchPlan(token_S, weight_S, counts_E, x_TD.shape[0], A, num_dropped)
        return x_SD, counts_E.tolist(), plan

    def combine(self, out_SD: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
        """Sum each (already gate-weighted) result into its token: (S, D) -> (T, D)."""
        y_TD = out_SD.new_zeros(plan.num_tokens, out_SD.shape[-1])
        # index_put_ with accumulate, not index_add: index_add saves its (S, D) source for backward
        return y_TD.index_put_((plan.token_idx_S,), out_SD, accumulate=True)
