"""The paper's hierarchical MoE (Shazeer et al. 2017, appendix B): a primary gate over groups,
each group an MoE over its own experts.

Legend: T tokens, D d_model, S kept assignments to groups, G groups, E2 experts per group.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from mixkit.moe import balance
from mixkit.moe.config import HierarchicalConfig
from mixkit.moe.dispatch import LocalDispatcher
from mixkit.moe.layer import MoE
from mixkit.moe.routing import RoutingDecision, build_router
from mixkit.moe.stats import MoEStats


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
        w_importance: float | None = None,
        w_load: float | None = None,
        w_zloss: float = 0.0,
        **options: Any,
    ) -> None:
        """`options` are the groups' MoEConfig options (router, capacity_factor, expert, router
        options); loss weights left as None take HIERARCHICAL_LOSS_WEIGHTS (the paper's)."""
        super().__init__()
        cfg = HierarchicalConfig(
            d_model,
            d_hidden,
            num_groups,
            experts_per_group,
            k_primary,
            k_secondary,
            w_importance,
            w_load,
            w_zloss,
            options,
        )
        self.cfg = cfg
        self.primary_cfg = cfg.primary()
        self.primary = build_router(self.primary_cfg)
        self.dispatcher = LocalDispatcher(num_groups)
        self.groups = nn.ModuleList(MoE.from_config(cfg.group(g)) for g in range(num_groups))
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.last_stats: MoEStats | None = None

    @classmethod
    def from_config(cls, cfg: HierarchicalConfig) -> HierarchicalMoE:
        return cls(
            cfg.d_model,
            cfg.d_hidden,
            cfg.num_groups,
            cfg.experts_per_group,
            cfg.k_primary,
            cfg.k_secondary,
            cfg.w_importance,
            cfg.w_load,
            cfg.w_zloss,
            **cfg.options,
        )

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
        cfg = self.cfg
        self.aux_loss = (
            cast(float, cfg.w_importance) * losses["importance_loss"]
            + cast(float, cfg.w_load) * losses["load_loss"]
            + cfg.w_zloss * losses["z_loss"]
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
