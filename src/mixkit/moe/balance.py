"""Balancing losses. Pure functions of a RoutingDecision, so they are easy to test.

Legend: T tokens, E experts, A assignments.

- importance: CV(sum over tokens of the gate values)^2                  (Shazeer et al. 2017, eq. 6)
- load:       CV(sum over tokens of P(expert in top-k))^2, smooth with noise (eq. 8-10)
- switch:     E * sum_i f_i * P_i, f = fraction of assignments, P = mean router probability
              (Fedus et al. 2021; GShard). f and P both sum to 1, so the loss is 1 at perfect
              balance for every k. Peers that count k-hot masks (sum k) against probabilities
              (sum 1) mix scales and get a minimum of k instead.
- z-loss:     mean over tokens of logsumexp(logits)^2                   (Zoph et al. 2022, ST-MoE)
"""

from __future__ import annotations

import torch

from mixkit.moe.routing import RoutingDecision


def cv_squared(v_E: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation, population variance: var(v) / mean(v)^2. 0 for one expert."""
    if v_E.numel() <= 1:
        return v_E.sum() * 0.0
    return v_E.var(correction=0) / (v_E.mean() ** 2 + eps)


def importance_E(decision: RoutingDecision, num_experts: int) -> torch.Tensor:
    """Sum over tokens of each expert's gate value (the sparse gate matrix G(X) summed over X)."""
    out = decision.weight_A.new_zeros(num_experts)
    return out.index_add(0, decision.expert_idx_A, decision.weight_A)


def load_E(decision: RoutingDecision, num_experts: int) -> torch.Tensor:
    """Smooth load (differentiable) when the router has noise, else assignment counts (no gradient)."""
    if decision.load_E is not None:
        return decision.load_E
    counts = torch.bincount(decision.expert_idx_A, minlength=num_experts)
    return counts.to(decision.weight_A.dtype)


def switch_loss_of_sums(
    counts_E: torch.Tensor,
    probsum_E: torch.Tensor,
    tokens: torch.Tensor | int,
    assignments: torch.Tensor | int,
) -> torch.Tensor:
    """E * sum_i f_i * P_i from the assignment counts and the summed routing probabilities."""
    return counts_E.numel() * ((counts_E / assignments) * (probsum_E / tokens)).sum()


def switch_loss(decision: RoutingDecision, num_experts: int) -> torch.Tensor:
    counts_E = torch.bincount(decision.expert_idx_A, minlength=num_experts)
    probs_TE = decision.probs()
    return switch_loss_of_sums(
        counts_E.to(probs_TE.dtype),
        probs_TE.sum(dim=0),
        max(probs_TE.shape[0], 1),
        max(decision.expert_idx_A.numel(), 1),
    )


def z_sum(decision: RoutingDecision) -> torch.Tensor:
    """Sum over tokens of logsumexp(logits)^2; z-loss is this over the number of tokens."""
    return torch.logsumexp(decision.logits_TE, dim=-1).pow(2).sum()


def z_loss(decision: RoutingDecision) -> torch.Tensor:
    return z_sum(decision) / max(decision.logits_TE.shape[0], 1)


def entropy_sum(decision: RoutingDecision) -> torch.Tensor:
    """Sum over tokens of the entropy (nats) of each token's routing distribution (no gradient)."""
    with torch.no_grad():
        p = decision.probs()
        return -(p * torch.log(p.clamp_min(1e-20))).sum()


def router_entropy(decision: RoutingDecision) -> torch.Tensor:
    """Mean entropy (nats) of each token's routing distribution over all experts."""
    return entropy_sum(decision) / max(decision.logits_TE.shape[0], 1)
