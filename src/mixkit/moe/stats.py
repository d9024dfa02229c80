"""Routing statistics and balancing losses of one forward, from a few sums over tokens.

Legend: T tokens, E experts, A assignments.

Every loss of balance.py is a function of per-batch sums (importance, load, summed routing
probabilities, assignment counts, z), so a layer computes those sums, optionally sums them over a
process group (expert or data parallelism), and takes the losses of the sums. Only the trained
losses are needed during the forward; the rest are statistics, computed when first read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch

from mixkit.moe import balance
from mixkit.moe.config import MoEConfig
from mixkit.moe.routing import RoutingDecision


class MoEStats:
    """Routing statistics of one forward. Tensors are detached; `as_dict()` gives plain numbers.

    tokens_per_expert: (E,) kept assignments per expert. dropped_fraction: dropped assignments /
    all assignments (expert choice: tokens with no expert / T). router_entropy: mean entropy (nats)
    of the routing distribution over experts. losses: every loss's unweighted value.
    The entropy and the losses that are not trained need (T, E) passes that training does not, so
    a layer may hand them over as `compute`, called on first access.
    """

    def __init__(
        self,
        tokens_per_expert: torch.Tensor,
        dropped_fraction: torch.Tensor,
        router_entropy: torch.Tensor | None = None,
        losses: dict[str, torch.Tensor] | None = None,
        compute: Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
    ) -> None:
        self.tokens_per_expert = tokens_per_expert
        self.dropped_fraction = dropped_fraction
        self._entropy, self._losses, self._compute = router_entropy, losses, compute

    def _resolve(self) -> None:
        if self._compute is not None:
            self._entropy, self._losses = self._compute()
            self._compute = None

    @property
    def router_entropy(self) -> torch.Tensor:
        self._resolve()
        return cast(torch.Tensor, self._entropy)  # given, or set by compute

    @property
    def losses(self) -> dict[str, torch.Tensor]:
        self._resolve()
        return self._losses if self._losses is not None else {}

    def __getitem__(self, key: str) -> Any:
        if key in self.losses:
            return self.losses[key]
        return getattr(self, key)

    def as_dict(self) -> dict:
        out = {
            "tokens_per_expert": self.tokens_per_expert.tolist(),
            "dropped_fraction": float(self.dropped_fraction),
            "router_entropy": float(self.router_entropy),
        }
        out.update({name: float(v) for name, v in self.losses.items()})
        return out


LOSS_WEIGHTS = {
    "importance_loss": "w_importance",
    "load_loss": "w_load",
    "switch_loss": "w_switch",
    "z_loss": "w_zloss",
}
# the per-batch sums each loss is a function of ("sizes": tokens and assignments)
_SUMS_OF_LOSS = {
    "importance_loss": ("importance",),
    "load_loss": ("load",),
    "switch_loss": ("probsum", "counts"),
    "z_loss": ("zsum",),
}


def _routing_sums(
    decision: RoutingDecision, E: int, names: Iterable[str], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The sums over tokens that the losses and the entropy are functions of, each 1-D."""
    fns = {
        "importance": lambda: balance.importance_E(decision, E),
        "load": lambda: balance.load_E(decision, E),
        "probsum": lambda: decision.probs().sum(dim=0),
        "counts": lambda: torch.bincount(decision.expert_idx_A, minlength=E),
        "zsum": lambda: balance.z_sum(decision).reshape(1),
        "entropy": lambda: balance.entropy_sum(decision).reshape(1),
    }
    return {name: fns[name]().to(dtype) for name in names}


def _losses_of_sums(
    sums: dict[str, torch.Tensor], tokens: torch.Tensor, assignments: torch.Tensor
) -> dict[str, torch.Tensor]:
    out = {}
    if "importance" in sums:
        out["importance_loss"] = balance.cv_squared(sums["importance"])
    if "load" in sums:
        out["load_loss"] = balance.cv_squared(sums["load"])
    if "probsum" in sums:
        out["switch_loss"] = balance.switch_loss_of_sums(
            sums["counts"], sums["probsum"], tokens, assignments
        )
    if "zsum" in sums:
        out["z_loss"] = (sums["zsum"] / tokens).squeeze(0)
    return out


def group_losses(
    decision: RoutingDecision,
    cfg: MoEConfig,
    extra: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]]:
    """The weighted sum of the trained losses, the summed extras, and the statistics.

    Every loss is a function of a few sums over tokens (importance, load, routing probability,
    assignment counts, z), so it is computed from those sums. `reduce` (expert or data
    parallelism) sums them over the group first, in one collective, with `extra` (counts) riding
    along; each loss then covers the whole group's batch, as the paper defines it, and every
    statistic is computed now. Without it, only the trained losses are computed here and the
    rest (the entropy, the losses only reported) when `last_stats` is first read.
    Returns (aux_loss, extra_sum + [group tokens, group assignments], stats_fn).
    """
    E = cfg.num_experts
    dtype = decision.weight_A.dtype
    trained = [n for n, w in LOSS_WEIGHTS.items() if getattr(cfg, w) > 0]
    every = [s for n in LOSS_WEIGHTS for s in _SUMS_OF_LOSS[n]] + ["entropy"]
    wanted = every if reduce is not None else [s for n in trained for s in _SUMS_OF_LOSS[n]]
    with torch.no_grad():
        sizes_2 = extra.new_tensor([decision.logits_TE.shape[0], decision.expert_idx_A.numel()])
    gradless = {s for n, w in LOSS_WEIGHTS.items() if n not in trained for s in _SUMS_OF_LOSS[n]}
    gradless.add("entropy")
    sums = _routing_sums(decision, E, [s for s in wanted if s not in gradless], dtype)
    with torch.no_grad():  # after the others: probs() made without gradient would be reused
        sums.update(_routing_sums(decision, E, [s for s in wanted if s in gradless], dtype))
    if reduce is not None:
        names = list(sums)
        flat = reduce(torch.cat([sums[n] for n in names] + [extra.to(dtype), sizes_2.to(dtype)]))
        parts = flat.split([sums[n].numel() for n in names] + [extra.numel(), 2])
        sums = dict(zip(names, parts[:-2], strict=True))
        extra, sizes_2 = parts[-2], parts[-1]
    tokens, assignments = sizes_2[0].clamp_min(1), sizes_2[1].clamp_min(1)
    values = _losses_of_sums(sums, tokens, assignments)
    total = decision.weight_A.new_zeros(())
    for name in trained:
        total = total + getattr(cfg, LOSS_WEIGHTS[name]) * values[name]
    done = {n: v.detach() for n, v in sums.items()}

    def stats() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            rest = _routing_sums(decision, E, [s for s in every if s not in done], dtype)
            all_sums = {**done, **rest}
            losses = _losses_of_sums(all_sums, tokens, assignments)
            return (all_sums["entropy"] / tokens).squeeze(0), losses

    return total, torch.cat([extra.detach(), sizes_2.detach().to(extra.dtype)]), stats
