"""Routers: x_TD -> RoutingDecision (which expert each assignment goes to, with what weight).

Legend (tensor-name suffixes):
    T tokens   D d_model   E experts   K experts per token (k)   A assignments   C capacity

A decision is a flat list of A (token, expert, weight) assignments. Token-choice routers emit them
slot-major (every token's first choice, then every token's second choice ...), so when capacity is
limited, first choices win over second choices. Expert choice emits them expert-major.

Every router here keeps a gradient path to its weights, including top-1: a softmax taken over the
single kept logit is identically 1 and would give the router zero gradient, so for k=1 the gate is
the probability under the softmax over all E experts (as in Switch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mixkit.moe.config import MoEConfig

_SQRT2 = math.sqrt(2.0)


@dataclass
class RoutingDecision:
    token_idx_A: torch.Tensor  # (A,) long: which token
    expert_idx_A: torch.Tensor  # (A,) long: which expert
    weight_A: torch.Tensor  # (A,) float: gate weight, carries the router's gradient
    logits_TE: torch.Tensor  # (T, E) clean router logits (for z-loss)
    probs_TE: torch.Tensor  # (T, E) routing distribution over all experts, rows sum to 1
    load_TE: torch.Tensor | None = None  # (T, E) smooth P(expert in top-k), noisy_topk in training
    num_tokens: int = 0
    expert_choice: bool = False


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / _SQRT2))


def _token_choice(
    select_TE: torch.Tensor,
    gate_TE: torch.Tensor,
    k: int,
    renormalize: bool,
    topk_ids_TK: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k by `select_TE` (or the given ids), weights read from `gate_TE`. Returns flat
    slot-major assignments."""
    T = select_TE.shape[0]
    if topk_ids_TK is None:
        topk_ids_TK = select_TE.topk(k, dim=-1).indices
    weights_TK = gate_TE.gather(1, topk_ids_TK)
    if renormalize and k > 1:  # for k=1 renormalising would make the gate identically 1
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    token_idx_A = torch.arange(T, device=select_TE.device).repeat(k)  # slot-major
    return token_idx_A, topk_ids_TK.t().reshape(-1), weights_TK.t().reshape(-1)


class Router(nn.Module):
    """Base router: a linear gate W_g (D, E). Subclasses decide selection and weights."""

    def __init__(self, cfg: MoEConfig, zero_init: bool = False):
        super().__init__()
        self.cfg = cfg
        self.w_gate = nn.Parameter(torch.empty(cfg.d_model, cfg.num_experts))
        if zero_init:
            nn.init.zeros_(self.w_gate)
        else:
            nn.init.normal_(self.w_gate, std=cfg.d_model**-0.5)

    def forward(self, x_TD: torch.Tensor, noise_TE: torch.Tensor | None = None) -> RoutingDecision:
        raise NotImplementedError


class NoisyTopKRouter(Router):
    """Shazeer et al. 2017: H(x) = x W_g + N(0,1) * softplus(x W_noise); KeepTopK; softmax.

    W_g and W_noise start at zero (the paper's choice: equal load at the start). Noise is drawn only
    in training; in eval the router is deterministic. In training it also returns the smooth load
    estimator P(x, i) = Phi((clean_i - kth_excluding(H, k, i)) / noise_std_i).
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__(cfg, zero_init=True)
        self.w_noise = nn.Parameter(torch.zeros(cfg.d_model, cfg.num_experts))

    def forward(self, x_TD, noise_TE=None):
        k, E = self.cfg.k, self.cfg.num_experts
        clean_TE = x_TD @ self.w_gate
        load_TE = None
        top_ids_TK = None
        if self.training:
            raw_noise_TE = x_TD @ self.w_noise
            if noise_TE is None:
                noise_TE = torch.randn_like(clean_TE)
            # One top-(k+1) serves both the selection (its first k) and the load estimator's
            # thresholds; it is index-only, so it needs no gradient.
            with torch.no_grad():
                noisy = clean_TE + noise_TE * (F.softplus(raw_noise_TE) + self.cfg.noise_eps)
                top_ids_Tk1 = noisy.topk(min(k + 1, E), dim=-1).indices
            top_ids_TK = top_ids_Tk1[:, :k]
            # Recomputed in backward: the gate and load math would otherwise keep ~8 (T, E)
            # tensors alive, more than the experts' own activations at E=256.
            noisy_TE, probs_TE, load_TE = checkpoint(
                _noisy_gate,
                clean_TE,
                raw_noise_TE,
                noise_TE,
                top_ids_Tk1,
                k,
                self.cfg.noise_eps,
                use_reentrant=False,
            )
        else:
            noisy_TE = clean_TE
            probs_TE = noisy_TE.softmax(dim=-1)
        # softmax over the kept k == the full softmax renormalised over the kept k
        tok, exp, w = _token_choice(noisy_TE, probs_TE, k, renormalize=True, topk_ids_TK=top_ids_TK)
        return RoutingDecision(tok, exp, w, clean_TE, probs_TE, load_TE, x_TD.shape[0])


def _noisy_gate(clean_TE, raw_noise_TE, noise_TE, top_ids_Tk1, k: int, noise_eps: float):
    """H = clean + noise * softplus(raw) (+eps); returns H, softmax(H) and the smooth load."""
    noise_std_TE = F.softplus(raw_noise_TE) + noise_eps
    noisy_TE = clean_TE + noise_TE * noise_std_TE
    if k < clean_TE.shape[-1]:
        load_TE = smooth_load(clean_TE, noisy_TE, noise_std_TE, k, top_ids_Tk1)
    else:  # every expert is always selected
        load_TE = torch.ones_like(clean_TE)
    return noisy_TE, noisy_TE.softmax(dim=-1), load_TE


def smooth_load(
    clean_TE: torch.Tensor,
    noisy_TE: torch.Tensor,
    noise_std_TE: torch.Tensor,
    k: int,
    top_ids_Tk1: torch.Tensor | None = None,
) -> torch.Tensor:
    """P(expert i is in the top k of token t), re-drawing only expert i's noise (paper, App. A).

    kth_excluding(H, k, i) is the k-th largest noisy logit among the other experts. If i is in the
    current top k, that is the (k+1)-th largest overall; otherwise it is the k-th largest.
    `top_ids_Tk1`, the indices of the k+1 largest, may be passed in when already known.
    """
    if top_ids_Tk1 is None:
        top_T_k1 = noisy_TE.topk(k + 1, dim=-1).values  # (T, k+1)
    else:
        top_T_k1 = noisy_TE.gather(1, top_ids_Tk1)  # differentiable, like topk's values
    threshold_if_in_T1 = top_T_k1[:, k : k + 1]
    threshold_if_out_T1 = top_T_k1[:, k - 1 : k]
    is_in_TE = noisy_TE > threshold_if_in_T1
    # pick each entry's threshold first, then one CDF: half the (T, E) passes of two CDFs + where
    threshold_TE = torch.where(is_in_TE, threshold_if_in_T1, threshold_if_out_T1)
    return normal_cdf((clean_TE - threshold_TE) / noise_std_TE)


class TopKRouter(Router):
    """softmax over all experts, then top-k, optionally renormalised over the kept k (Mixtral)."""

    def forward(self, x_TD, noise_TE=None):
        logits_TE = x_TD @ self.w_gate
        probs_TE = logits_TE.softmax(dim=-1)
        tok, exp, w = _token_choice(logits_TE, probs_TE, self.cfg.k, self.cfg.renormalize)
        return RoutingDecision(tok, exp, w, logits_TE, probs_TE, None, x_TD.shape[0])


class SwitchRouter(TopKRouter):
    """Top-1 (Fedus et al. 2021). The gate is the un-renormalised softmax probability, so the router
    is trained through the output, not only through the auxiliary loss."""


class ExpertChoiceRouter(Router):
    """Zhou et al. 2022: each expert takes its top C = k*T/E tokens by softmax score.

    Balanced by construction; a token may get zero or several experts. It looks at the whole batch,
    so it is not causal: mind this in autoregressive decoding.
    """

    def forward(self, x_TD, noise_TE=None):
        T, E = x_TD.shape[0], self.cfg.num_experts
        logits_TE = x_TD @ self.w_gate
        probs_TE = logits_TE.softmax(dim=-1)
        C = self.cfg.capacity(T)
        weights_EC, token_idx_EC = probs_TE.t().topk(C, dim=-1)
        expert_idx_A = torch.arange(E, device=x_TD.device).repeat_interleave(C)
        return RoutingDecision(
            token_idx_EC.reshape(-1),
            expert_idx_A,
            weights_EC.reshape(-1),
            logits_TE,
            probs_TE,
            None,
            T,
            expert_choice=True,
        )


class SigmoidBiasRouter(Router):
    """DeepSeek-V3: sigmoid affinities; a per-expert bias, used only to *select*, balances load.

    The bias is a buffer, never trained by gradient: `update_router_biases(model)` (a training hook,
    called after optimizer.step()) nudges it by gamma * sign(mean_load - load_i) using the loads
    accumulated since the previous update. Gate weights are the sigmoid scores of the chosen
    experts, normalised over the k (for k > 1) and multiplied by route_scale.
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__(cfg)
        self.register_buffer("bias", torch.zeros(cfg.num_experts))
        self.register_buffer("load_accum", torch.zeros(cfg.num_experts), persistent=False)

    def forward(self, x_TD, noise_TE=None):
        logits_TE = x_TD @ self.w_gate
        scores_TE = logits_TE.sigmoid()
        select_TE = scores_TE.detach() + self.bias
        tok, exp, w = _token_choice(select_TE, scores_TE, self.cfg.k, renormalize=True)
        w = w * self.cfg.route_scale
        if self.training:
            self.load_accum += torch.bincount(exp, minlength=self.cfg.num_experts).to(
                self.load_accum
            )
        probs_TE = scores_TE / scores_TE.sum(dim=-1, keepdim=True)
        return RoutingDecision(tok, exp, w, logits_TE, probs_TE, None, x_TD.shape[0])

    @torch.no_grad()
    def update_bias(self) -> None:
        from mixkit import distributed as mdist

        if mdist.is_initialized():  # data/expert parallel: every rank applies the global load
            mdist.all_reduce_(self.load_accum)
        if self.load_accum.sum() == 0:
            return
        self.bias += self.cfg.bias_update_rate * torch.sign(
            self.load_accum.mean() - self.load_accum
        )
        self.load_accum.zero_()


ROUTER_CLASSES: dict[str, type[Router]] = {
    "noisy_topk": NoisyTopKRouter,
    "topk": TopKRouter,
    "switch": SwitchRouter,
    "expert_choice": ExpertChoiceRouter,
    "sigmoid_bias": SigmoidBiasRouter,
}


def build_router(cfg: MoEConfig) -> Router:
    return ROUTER_CLASSES[cfg.router](cfg)


def update_router_biases(model: nn.Module) -> None:
    """Training hook for aux-loss-free balancing: call after optimizer.step(). No-op for others."""
    for module in model.modules():
        if isinstance(module, SigmoidBiasRouter):
            module.update_bias()
