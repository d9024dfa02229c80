"""Dispatch and combine: move tokens to their experts and the results back.

Legend: T tokens, D d_model, E experts, A assignments (before capacity), S kept assignments.

Every dispatcher has the same two methods (the `Dispatcher` protocol), which is all an MoE layer
calls, so where the experts live is decided from outside (parallel.shard_experts swaps in its
all_to_all dispatcher):

    route = dispatcher.route(router, x_TD, noise_TE)        # the decision and the capacity
    y_TD, routed = dispatcher.run(x_TD, route, experts, impl)
    dispatcher.reduce_stats                                 # None, or the sum over its group

The local dispatcher's run() is dispatch -> experts -> combine:

    x_SD, counts, plan = dispatcher.dispatch(x_TD, decision, capacity)
    out_SD = experts(x_SD, counts, scale_A=plan.weight_S)   # local tensors and counts only
    y_TD = dispatcher.combine(out_SD, plan)

The local dispatcher sorts assignments by expert (stable, so the router's priority order, first
choices before second choices, survives within each expert), drops those past capacity, and
gathers the kept tokens. The experts scale each result by its gate weight (their backward can
then get the gate's gradient without keeping the unscaled output), and combine() sums each result
back into its token. An expert-parallel dispatcher (parallel.py) does the same across ranks.

Token-choice routers give every token exactly k assignments, slot-major (a = slot*T + t), so both
directions can be written as gathers, with no scatter-add anywhere: the forward of dispatch and
the backward of combine gather rows by `token_idx_S`; the forward of combine and the backward of
dispatch gather, for each slot, the row where that assignment landed (`row_A`, or a zero row when
it was dropped) and add the k slots. On the CPU a scatter-add (index_add / index_put with
accumulate) runs serially and was the largest cost outside the expert matmuls; gathers run in
parallel. Expert choice (a token gets any number of experts) keeps the scatter-add path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch

from mixkit.moe.buffers import scratch
from mixkit.moe.experts import Experts
from mixkit.moe.routing import Router, RoutingDecision


@dataclass
class Route:
    """A router's decision and what the dispatcher needs to apply capacity to it."""

    decision: RoutingDecision
    capacity: int | None  # assignments each expert may keep; None: dropless
    token_offset: int = 0  # where these tokens start in the batch the capacity counts
    batch_tokens: int = 0  # tokens of that batch (this process's T when local)


@dataclass
class Routed:
    """What run() reports for the layer's statistics."""

    counts_E: torch.Tensor  # (E,) kept assignments per expert (experts held here; others 0)
    num_dropped: int  # assignments past capacity, among those the experts here received
    token_idx_S: torch.Tensor  # (S,) token of each kept assignment of this process's tokens


class Dispatcher(Protocol):
    reduce_stats: Callable[[torch.Tensor], torch.Tensor] | None

    def route(self, router: Router, x_TD: torch.Tensor, noise_TE: torch.Tensor | None) -> Route: ...

    def run(
        self, x_TD: torch.Tensor, route: Route, experts: Experts, impl: str
    ) -> tuple[torch.Tensor, Routed]: ...


def keep_within_capacity(
    expert_sorted_A: torch.Tensor, counts_E: torch.Tensor, capacity: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Assignments sorted by expert (in priority order within each) -> which to keep.

    Each expert keeps its first `capacity`. Returns (keep_A mask, kept counts_E, number dropped).
    """
    starts_E = counts_E.cumsum(0) - counts_E
    position_A = torch.arange(expert_sorted_A.numel(), device=counts_E.device)
    keep_A = position_A - starts_E[expert_sorted_A] < capacity
    kept_E = counts_E.clamp(max=capacity)
    return keep_A, kept_E, int((counts_E - kept_E).sum())


@dataclass
class DispatchPlan:
    token_idx_S: torch.Tensor  # (S,) token of each kept assignment, sorted by expert
    weight_S: torch.Tensor  # (S,) its gate weight
    counts_E: torch.Tensor  # (E,) kept assignments per expert
    num_tokens: int
    num_assignments: int  # A, before capacity
    num_dropped: int
    # token choice only: row of assignment a (slot-major) among the S kept ones, S when dropped
    row_A: torch.Tensor | None = None
    k: int = 0


def _gather(src_ND: torch.Tensor, idx_M: torch.Tensor) -> torch.Tensor:
    """src_ND[idx_M] into a pooled buffer (see buffers.ScratchPool)."""
    out_MD = scratch.take(idx_M.shape[0], src_ND.shape[1], like=src_ND)
    return torch.index_select(src_ND, 0, idx_M, out=out_MD)


def _sum_slots(src_SD: torch.Tensor, row_A: torch.Tensor, k: int, T: int) -> torch.Tensor:
    """(T, D): for each token, the sum over its k slots of src row row_A[slot*T + t] (row S = 0)."""
    S, D = src_SD.shape
    if row_A.numel() > S:  # some assignments were dropped: give them a zero row to point at
        src_SD = torch.cat([src_SD, src_SD.new_zeros(1, D)])
    out_TD = _gather(src_SD, row_A[:T])
    for slot in range(1, k):
        out_TD += src_SD.index_select(0, row_A[slot * T : (slot + 1) * T])
    return out_TD


class _GatherToExperts(torch.autograd.Function):
    """x_SD = x_TD[token_S]; backward sums each token's k slots by gathers."""

    @staticmethod
    def forward(
        ctx: Any, x_TD: torch.Tensor, token_S: torch.Tensor, row_A: torch.Tensor, k: int
    ) -> torch.Tensor:
        ctx.save_for_backward(row_A)
        ctx.k, ctx.T = k, x_TD.shape[0]
        return _gather(x_TD, token_S)

    @staticmethod
    def backward(ctx: Any, g_SD: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (row_A,) = ctx.saved_tensors
        return _sum_slots(g_SD.contiguous(), row_A, ctx.k, ctx.T), None, None, None


class _CombineSlots(torch.autograd.Function):
    """y_TD = sum over the k slots of out_SD[row_A]; backward gathers g_TD[token_S]."""

    @staticmethod
    def forward(
        ctx: Any, out_SD: torch.Tensor, token_S: torch.Tensor, row_A: torch.Tensor, k: int, T: int
    ) -> torch.Tensor:
        ctx.save_for_backward(token_S)
        return _sum_slots(out_SD, row_A, k, T)

    @staticmethod
    def backward(ctx: Any, g_TD: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (token_S,) = ctx.saved_tensors
        return _gather(g_TD.contiguous(), token_S), None, None, None, None


class LocalDispatcher:
    """Every expert in this process."""

    # the batch is this process's: nothing to sum over
    reduce_stats: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts

    def route(self, router: Router, x_TD: torch.Tensor, noise_TE: torch.Tensor | None) -> Route:
        T = x_TD.shape[0]
        return Route(router(x_TD, noise_TE), router.cfg.capacity(T), 0, T)

    def run(
        self, x_TD: torch.Tensor, route: Route, experts: Experts, impl: str
    ) -> tuple[torch.Tensor, Routed]:
        x_SD, counts, plan = self.dispatch(x_TD, route.decision, route.capacity)
        # source: the experts keep x_TD for backward rather than the k-times-larger x_SD
        out_SD = experts(x_SD, counts, impl, plan.weight_S, source=(x_TD, plan.token_idx_S))
        y_TD = self.combine(out_SD, plan)
        return y_TD, Routed(plan.counts_E, plan.num_dropped, plan.token_idx_S)

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
            expert_sorted_A = expert_idx_A.index_select(0, order_A)  # cheaper than x[order]
        counts_E = torch.bincount(expert_idx_A, minlength=E)
        token_S, weight_S = decision.token_idx_A, decision.weight_A
        if order_A is not None:
            token_S, weight_S = token_S.index_select(0, order_A), weight_S.index_select(0, order_A)
        num_dropped = 0
        if capacity is not None and not decision.expert_choice and int(counts_E.max()) > capacity:
            keep_A, counts_E, num_dropped = keep_within_capacity(
                expert_sorted_A, counts_E, capacity
            )
            token_S, weight_S = token_S[keep_A], weight_S[keep_A]
        T = x_TD.shape[0]
        if decision.expert_choice or T == 0:
            x_SD = x_TD.index_select(0, token_S)
            plan = DispatchPlan(token_S, weight_S, counts_E, T, A, num_dropped)
            return x_SD, counts_E.tolist(), plan
        # token choice: where did each assignment land among the kept rows?
        S = token_S.shape[0]
        row_A = torch.full((A,), S, dtype=torch.long, device=x_TD.device)
        kept_order = order_A if num_dropped == 0 else cast(torch.Tensor, order_A)[keep_A]
        row_A[kept_order] = torch.arange(S, device=x_TD.device)
        k = A // T
        x_SD = _GatherToExperts.apply(x_TD, token_S, row_A, k)
        plan = DispatchPlan(token_S, weight_S, counts_E, T, A, num_dropped, row_A, k)
        return x_SD, counts_E.tolist(), plan

    def combine(self, out_SD: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
        """Sum each (already gate-weighted) result into its token: (S, D) -> (T, D)."""
        if plan.row_A is not None:
            return _CombineSlots.apply(
                out_SD, plan.token_idx_S, plan.row_A, plan.k, plan.num_tokens
            )
        y_TD = out_SD.new_zeros(plan.num_tokens, out_SD.shape[-1])
        # index_put_ with accumulate, not index_add: index_add saves its (S, D) source for backward
        return y_TD.index_put_((plan.token_idx_S,), out_SD, accumulate=True)
