"""The MoE layer: router -> dispatcher.dispatch() -> experts -> dispatcher.combine().

Legend: T tokens, D d_model, H d_hidden, E experts, A assignments, S kept assignments, G groups.

    layer = MoE(d_model=512, d_hidden=1024, num_experts=64, k=2, router="noisy_topk")
    y = layer(x)            # x: (..., d_model) -> y: same shape
    layer.aux_loss          # weighted balancing losses of the last forward (0 when none apply)
    layer.last_stats        # MoEStats: tokens_per_expert, dropped_fraction, router_entropy, losses
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from mixkit import distributed as mdist
from mixkit.moe import balance
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
        self.stats_group: object | None = None
        self.sync_stats = False
        self.expert_impl = "auto"  # "loop" | "grouped_mm" | "auto"
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.last_stats: MoEStats | None = None
        self.last_decision: RoutingDecision | None = None

    def set_stats_group(self, group: object | None = None) -> None:
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
        return cls(**cfg.to_dict())

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


class HierarchicalMoE(nn.Module):
    """The paper's two-level MoE (Shazeer et al. 2017, appendix B).

    A primary gate picks k_primary of num_groups groups; each group is an MoE with its own gate over
    experts_per_group experts. y = sum_i sum_j G_primary(x)_i * G_i(x)_j * E_ij(x).

    Balancing uses the paper's hierarchical definitions over all G*E2 experts:
        Importance_H(X)_ij = sum_{x in X_i} G_primary(x)_i * G_i(x)_j
        Load_H(X)_ij       = Load_primary(X)_i * Load_i(X_i)_j / |X_i|
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        num_groups: int,
        experts_per_group: int,
        k_primary: int = 2,
        k_secondary: int = 2,
        router: str = "noisy_topk",
        capacity_factor: float | None = None,
        expert: str = "relu",
        w_importance: float = 0.1,
        w_load: float = 0.1,
        w_zloss: float = 0.0,
        **router_options: Any,
    ) -> None:
        super().__init__()
        if router == "expert_choice":
            raise ValueError(
                "HierarchicalMoE: router 'expert_choice' is not supported; use a token-choice router"
            )
        common = dict(
            router=router, expert=expert, w_importance=0.0, w_load=0.0, w_switch=0.0, w_zloss=0.0
        )
        self.primary_cfg = MoEConfig.from_options(
            d_model,
            d_hidden,
            num_groups,
            k=k_primary,
            name="hierarchical_moe.primary",
            **common,
            **router_options,
        )
        self.primary = build_router(self.primary_cfg)
        self.dispatcher = LocalDispatcher(num_groups)
        self.groups = nn.ModuleList(
            MoE(
                d_model,
                d_hidden,
                experts_per_group,
                k=k_secondary,
                capacity_factor=capacity_factor,
                name=f"hierarchical_moe.groups.{g}",
                **common,
                **router_options,
            )
            for g in range(num_groups)
        )
        self.w_importance, self.w_load, self.w_zloss = w_importance, w_load, w_zloss
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.last_stats: MoEStats | None = None

    def forward(self, x: torch.Tensor, router_noise: torch.Tensor | None = None) -> torch.Tensor:
        D = self.primary_cfg.d_model
        if x.shape[-1] != D:
            raise ValueError(
                f"HierarchicalMoE input's last dimension must be d_model={D}, got shape {tuple(x.shape)}"
            )
        x_TD = x.reshape(-1, D)
        decision = self.primary(x_TD, router_noise)
        x_SD, counts, plan = self.dispatcher.dispatch(x_TD, decision, None)
        pieces = x_SD.split(counts)
        outs, importance_rows, load_rows, tokens, zs = [], [], [], [], []
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        for g, (group, piece) in enumerate(
            zip(cast("list[MoE]", self.groups), pieces, strict=True)
        ):
            E2 = group.cfg.num_experts
            if piece.shape[0] == 0:
                importance_rows.append(x.new_zeros(E2))
                load_rows.append(x.new_zeros(E2))
                tokens.append(x.new_zeros(E2))
                continue
            outs.append(group(piece) * plan.weight_S[starts[g] : starts[g + 1]].unsqueeze(-1))
            d2 = cast(RoutingDecision, group.last_decision)  # set by group(piece) above
            w_primary_S = plan.weight_S[starts[g] : starts[g + 1]]  # this group's tokens, in order
            importance_rows.append(
                x.new_zeros(E2).index_add(
                    0, d2.expert_idx_A, w_primary_S[d2.token_idx_A] * d2.weight_A
                )
            )
            load_rows.append(balance.load_E(d2, E2) / piece.shape[0])
            tokens.append(cast(MoEStats, group.last_stats).tokens_per_expert)
            zs.append(balance.z_loss(d2))
        out_SD = torch.cat(outs) if outs else x_SD * 0.0
        y_TD = self.dispatcher.combine(out_SD, plan)

        load_primary_G = balance.load_E(decision, self.primary_cfg.num_experts)
        importance_H = torch.cat(importance_rows)
        load_H = torch.cat([load_primary_G[g] * row for g, row in enumerate(load_rows)])
        losses = {
            "importance_loss": balance.cv_squared(importance_H),
            "load_loss": balance.cv_squared(load_H),
            "z_loss": balance.z_loss(decision) + (torch.stack(zs).mean() if zs else 0.0),
        }
        self.aux_loss = (
            self.w_importance * losses["importance_loss"]
            + self.w_load * losses["load_loss"]
            + self.w_zloss * losses["z_loss"]
        )
        self.last_stats = MoEStats(
            tokens_per_expert=torch.cat(tokens).detach(),
            dropped_fraction=self._dropped_fraction(counts),
            router_entropy=balance.router_entropy(decision),
            losses={name: v.detach() for name, v in losses.items()},
        )
        return y_TD.reshape(x.shape)

    def _dropped_fraction(self, counts: list[int]) -> torch.Tensor:
        """Dropped assignments of every group over all their assignments."""
        pairs = list(zip(cast("list[MoE]", self.groups), counts, strict=True))
        dropped = sum(
            float(cast(MoEStats, g.last_stats).dropped_fraction) * c * g.cfg.k
            for g, c in pairs
            if c
        )
        total = sum(c * g.cfg.k for g, c in pairs)
        return torch.tensor(dropped / max(total, 1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def active_macs_per_token(self) -> int:
        cfg = self.primary_cfg
        return (
            cfg.d_model * cfg.num_experts
            + cfg.k * cast("list[MoE]", self.groups)[0].active_macs_per_token()
        )
