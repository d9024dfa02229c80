"""The MoE layer: router -> dispatcher.dispatch() -> experts -> dispatcher.combine().

Legend: T tokens, D d_model, H d_hidden, E experts, A assignments, S kept assignments, G groups.

    layer = MoE(d_model=512, d_hidden=1024, num_experts=64, k=2, router="noisy_topk")
    y = layer(x)            # x: (..., d_model) -> y: same shape
    layer.aux_loss          # weighted balancing losses of the last forward (0 when none apply)
    layer.last_stats        # MoEStats: tokens_per_expert, dropped_fraction, router_entropy, losses
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mixkit import distributed as mdist
from mixkit.moe.config import MoEConfig
from mixkit.moe.dispatch import Dispatcher, LocalDispatcher, Routed
from mixkit.moe.experts import Experts
from mixkit.moe.routing import RoutingDecision, build_router
from mixkit.moe.stats import MoEStats, group_losses


class MoE(nn.Module):
    """Sparsely-gated mixture of experts (Shazeer et al. 2017) with today's routers.

    Args:
        d_model, d_hidden, num_experts: sizes; each token is sent to k of num_experts FFNs.
        **options: every other field of `MoEConfig`, with its defaults: k (2), router
            ("noisy_topk" | "topk" | "switch" | "expert_choice" | "sigmoid_bias"),
            capacity_factor (None: dropless), expert ("relu" | "swiglu"), the loss weights and
            the router options. A bad value or an unknown option is a ConfigError naming it.
    """

    def __init__(self, d_model: int, d_hidden: int, num_experts: int, **options: Any) -> None:
        super().__init__()
        cfg = MoEConfig.from_options(d_model, d_hidden, num_experts, **options)
        expert = cfg.expert
        self.cfg = cfg
        self.router = build_router(cfg)
        self.experts = Experts(num_experts, d_model, d_hidden, expert)
        self.shared_experts = (
            Experts(cfg.num_shared_experts, d_model, d_hidden, expert)
            if cfg.num_shared_experts
            else None
        )
        # A Dispatcher (see dispatch.py): where the experts live is set from outside.
        self.dispatcher: Dispatcher = LocalDispatcher(num_experts)
        # Data-parallel training sets this (see set_stats_group): the balancing losses then use the
        # routing statistics of every rank's batch, not only this rank's.
        self.stats_group: mdist.ProcessGroup | None = None
        self.sync_stats = False
        self.expert_impl = "auto"  # "loop" | "grouped_mm" | "auto"
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.last_stats: MoEStats | None = None
        self.last_decision: RoutingDecision | None = None

    def set_stats_group(self, group: mdist.ProcessGroup | None = None) -> None:
        """Sum routing statistics over `group` (None: the default group) before taking the losses.

        Data-parallel training calls this so that importance and load cover the whole global
        batch, as in the paper. (A dispatcher whose experts span processes sums over its own
        group without it: see `reduce_stats`.)
        """
        self.stats_group, self.sync_stats = group, True

    def _stats_reducer(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """None when the batch is this process's alone; else the differentiable sum over a group."""
        if self.sync_stats:
            return lambda t: mdist.all_reduce_sum(t, self.stats_group)
        return self.dispatcher.reduce_stats

    @classmethod
    def from_config(cls, cfg: MoEConfig) -> MoE:
        return cls(**cfg.to_dict(), name=cfg.name)

    def forward(self, x: torch.Tensor, router_noise: torch.Tensor | None = None) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model). `router_noise` (T, E) fixes noisy_topk's noise."""
        cfg = self.cfg
        if x.shape[-1] != cfg.d_model:
            raise ValueError(
                f"MoE input's last dimension must be d_model={cfg.d_model}, got shape {tuple(x.shape)}"
            )
        x_TD = x.reshape(-1, cfg.d_model)
        route = self.dispatcher.route(self.router, x_TD, router_noise)
        y_TD, routed = self.dispatcher.run(x_TD, route, self.experts, self.expert_impl)
        y_TD = self._add_shared(x_TD, y_TD)
        return self._finish(x, route.decision, routed, y_TD)

    def _add_shared(self, x_TD: torch.Tensor, y_TD: torch.Tensor) -> torch.Tensor:
        if self.shared_experts is not None:
            for e in range(self.cfg.num_shared_experts):
                y_TD = y_TD + self.shared_experts.forward_dense(x_TD, e)
        return y_TD

    def _finish(
        self, x: torch.Tensor, decision: RoutingDecision, routed: Routed, y_TD: torch.Tensor
    ) -> torch.Tensor:
        """Losses and stats from the routing statistics, summed over a group first when the
        batch spans processes (see _stats_reducer)."""
        counts_E, num_dropped, token_idx_S = routed.counts_E, routed.num_dropped, routed.token_idx_S
        T = decision.logits_TE.shape[0]
        with torch.no_grad():
            if decision.expert_choice:
                covered = torch.zeros(T, dtype=torch.bool, device=x.device)
                covered[token_idx_S] = True
                covered_count = covered.sum()
            else:
                covered_count = torch.zeros((), device=x.device)
            extra = torch.cat(
                [counts_E.float(), x.new_tensor([num_dropped, covered_count]).float()]
            )
        reduce = self._stats_reducer()
        self.aux_loss, extra_sum, stats_fn = group_losses(decision, self.cfg, extra, reduce)
        E = self.cfg.num_experts
        counts_E, dropped_count, covered_g = extra_sum[:E], extra_sum[E], extra_sum[E + 1]
        group_tokens, group_assignments = extra_sum[E + 2], extra_sum[E + 3]
        if decision.expert_choice:
            dropped = 1.0 - covered_g / group_tokens.clamp_min(1)
        else:
            dropped = dropped_count / group_assignments.clamp_min(1)
        stats = MoEStats(counts_E.float(), dropped.float().cpu(), compute=stats_fn)
        self.last_stats = stats
        self.last_decision = decision
        return y_TD.reshape(x.shape)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def active_macs_per_token(self) -> int:
        """Multiply-adds one token costs at inference: the gate plus k experts (plus shared ones)."""
        cfg = self.cfg
        per_expert = self.experts.macs_per_assignment()
        return (
            cfg.d_model * cfg.num_experts + cfg.k * per_expert + cfg.num_shared_experts * per_expert
        )
