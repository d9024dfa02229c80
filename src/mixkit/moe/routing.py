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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from mixkit import distributed as mdist
from mixkit.moe.config import MoEConfig

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass
class RoutingDecision:
    token_idx_A: torch.Tensor  # (A,) long: which token
    expert_idx_A: torch.Tensor  # (A,) long: which expert
    weight_A: torch.Tensor  # (A,) float: gate weight, carries the router's gradient
    logits_TE: torch.Tensor  # (T, E) clean router logits (for z-loss)
    # (T, E) routing distribution over all experts, rows sum to 1. Routers whose gate weights do
    # not need it leave it None and give `probs_fn`, so that it is computed only when a loss or a
    # statistic asks for it (see probs()).
    probs_TE: torch.Tensor | None = None
    load_E: torch.Tensor | None = None  # (E,) smooth sum over tokens of P(expert in top-k)
    num_tokens: int = 0
    expert_choice: bool = False
    probs_fn: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    def probs(self) -> torch.Tensor:
        """(T, E) routing distribution; differentiable when computed with grad enabled."""
        p = self.probs_TE
        stale = p is not None and self.probs_fn is not None and not p.requires_grad
        if p is None or (stale and torch.is_grad_enabled() and self.logits_TE.requires_grad):
            make = cast(Callable[[], torch.Tensor], self.probs_fn)  # set when probs_TE is None
            p = self.probs_TE = make()  # made once, again only to add its gradient
        return p


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / _SQRT2))


def _slot_major(
    ids_TK: torch.Tensor, weights_TK: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat assignments, slot-major (every token's first choice, then every second choice ...)."""
    T, k = ids_TK.shape
    token_idx_A = torch.arange(T, device=ids_TK.device).repeat(k)
    return token_idx_A, ids_TK.t().reshape(-1), weights_TK.t().reshape(-1)


def _softmax_weights(
    top_TK: torch.Tensor, logits_TE: torch.Tensor | None, renormalize: bool
) -> torch.Tensor:
    """Gate weights of the kept k from their logits: the softmax over all E renormalised over the
    kept k is the softmax over the kept k, so only (T, k) values are needed. Without
    renormalising (and always for k=1, where it would make the gate identically 1) the weight is
    the probability under the softmax over all E: exp(logit - logsumexp)."""
    if renormalize and top_TK.shape[1] > 1:
        return top_TK.softmax(dim=-1)
    all_TE = cast(torch.Tensor, logits_TE)  # None only when renormalising k > 1
    return (top_TK - torch.logsumexp(all_TE, dim=-1, keepdim=True)).exp()


class Router(nn.Module):
    """Base router: a linear gate W_g (D, E). Subclasses decide selection and weights."""

    def __init__(self, cfg: MoEConfig, zero_init: bool = False) -> None:
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
    estimator summed over tokens, sum_x P(x, i) = sum_x Phi((clean_i - kth_excluding(H, k, i)) /
    noise_std_i), as one autograd Function (SmoothLoad) that keeps no (T, E) intermediates.
    """

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__(cfg, zero_init=True)
        self.w_noise = nn.Parameter(torch.zeros(cfg.d_model, cfg.num_experts))

    def forward(self, x_TD: torch.Tensor, noise_TE: torch.Tensor | None = None) -> RoutingDecision:
        k, E, eps = self.cfg.k, self.cfg.num_experts, self.cfg.noise_eps
        clean_TE = x_TD @ self.w_gate
        if not self.training:
            top = clean_TE.topk(k, dim=-1)
            w_TK = _softmax_weights(top.values, clean_TE, renormalize=True)
            tok, exp, w = _slot_major(top.indices, w_TK)
            return RoutingDecision(
                tok,
                exp,
                w,
                clean_TE,
                num_tokens=x_TD.shape[0],
                probs_fn=lambda: clean_TE.softmax(-1),
            )
        raw_noise_TE = x_TD @ self.w_noise
        noise: torch.Tensor | Callable[[], torch.Tensor]
        if noise_TE is not None:
            noise = noise_TE  # the caller's: kept, as it stays alive anyway
        else:
            noise_TE, noise = _redrawable_noise(clean_TE)
        # The selection and the load estimator's thresholds need the noisy logits without
        # gradient; one top-(k+1) serves both (its first k are the selection).
        with torch.no_grad():
            std_TE = F.softplus(raw_noise_TE) + eps
            noisy_TE = clean_TE + noise_TE * std_TE
            top_ids_Tk1 = noisy_TE.topk(min(k + 1, E), dim=-1).indices
        ids_TK = top_ids_Tk1[:, :k]
        # softmax over the kept k (for k=1 over all E, so that the gate is not identically 1)
        all_TE = _noisy(clean_TE, raw_noise_TE, noise_TE, eps) if k == 1 else None
        w_TK = _softmax_weights(
            _noisy(clean_TE, raw_noise_TE, noise_TE, eps, ids_TK), all_TE, renormalize=True
        )
        if k < E:
            load_E = SmoothLoad.apply(
                clean_TE, raw_noise_TE, top_ids_Tk1, std_TE, noisy_TE, k, eps, noise
            )
        else:  # every expert is always selected
            load_E = clean_TE.new_full((E,), float(x_TD.shape[0]))

        def probs_TE() -> torch.Tensor:
            n = noise if torch.is_tensor(noise) else noise()
            return _noisy(clean_TE, raw_noise_TE, n, eps).softmax(-1)

        tok, exp, w = _slot_major(ids_TK, w_TK)
        return RoutingDecision(
            tok,
            exp,
            w,
            clean_TE,
            load_E=load_E,
            num_tokens=x_TD.shape[0],
            probs_fn=probs_TE,
        )


def _redrawable_noise(like_TE: torch.Tensor) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
    """N(0, 1) noise shaped like `like_TE`, drawn from the default generator (as randn_like
    would), and a function that draws the same noise again from a copy of the generator's state,
    so that backward and the statistics need not keep a (T, E) tensor alive in between."""
    device = like_TE.device
    if device.type == "cpu":
        state = torch.random.get_rng_state()
    else:
        state = torch.cuda.get_rng_state(device)
    noise_TE = torch.randn_like(like_TE)

    def redraw() -> torch.Tensor:
        gen = torch.Generator(device=device)
        gen.set_state(state)
        return torch.randn(like_TE.shape, dtype=like_TE.dtype, device=device, generator=gen)

    return noise_TE, redraw


def _noisy(
    clean_TE: torch.Tensor,
    raw_TE: torch.Tensor,
    noise_TE: torch.Tensor,
    eps: float,
    ids_TK: torch.Tensor | None = None,
) -> torch.Tensor:
    """H = clean + noise * (softplus(raw) + eps), everywhere or at the given (T, k) ids."""
    if ids_TK is not None:
        clean_TE, raw_TE, noise_TE = (t.gather(1, ids_TK) for t in (clean_TE, raw_TE, noise_TE))
    return clean_TE + noise_TE * (F.softplus(raw_TE) + eps)


class SmoothLoad(torch.autograd.Function):
    """load_E = sum over tokens of smooth_load(...): the paper's load estimator, summed.

    Forward takes the noise std and the noisy logits already computed (without gradient) for the
    selection; backward recomputes them from the saved (clean, raw, noise) and writes the gradient
    in a few (T, E) passes, where autograd over the same formula keeps about eight (T, E) tensors
    and makes twice as many passes. The gradient reaches clean and raw directly, and through the
    two thresholds (the k-th and (k+1)-th largest noisy logits) at their experts.
    """

    @staticmethod
    def forward(
        ctx: Any,
        clean_TE: torch.Tensor,
        raw_TE: torch.Tensor,
        top_ids_Tk1: torch.Tensor,
        std_TE: torch.Tensor,
        noisy_TE: torch.Tensor,
        k: int,
        eps: float,
        noise: torch.Tensor | Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """noise: the (T, E) noise, or a function that draws it again (see _redrawable_noise)."""
        saved = (noise,) if torch.is_tensor(noise) else ()
        ctx.save_for_backward(clean_TE, raw_TE, top_ids_Tk1, *saved)
        ctx.k, ctx.eps, ctx.redraw = k, eps, None if saved else noise
        return smooth_load(clean_TE, noisy_TE, std_TE, k, top_ids_Tk1).sum(dim=0)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_E: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        clean_TE, raw_TE, top_ids_Tk1, *saved = ctx.saved_tensors
        noise_TE = saved[0] if saved else ctx.redraw()
        k = ctx.k
        std_TE = F.softplus(raw_TE) + ctx.eps
        noisy_TE = clean_TE + noise_TE * std_TE
        ids_in_T1, ids_out_T1 = top_ids_Tk1[:, k : k + 1], top_ids_Tk1[:, k - 1 : k]
        thr_in_T1, thr_out_T1 = noisy_TE.gather(1, ids_in_T1), noisy_TE.gather(1, ids_out_T1)
        is_in_TE = noisy_TE > thr_in_T1
        z_TE = (clean_TE - torch.where(is_in_TE, thr_in_T1, thr_out_T1)) / std_TE
        # d load / d clean = g * pdf(z) / std
        g_clean_TE = torch.exp(-0.5 * z_TE * z_TE).mul_(g_E * _INV_SQRT_2PI).div_(std_TE)
        g_std_TE = -g_clean_TE * z_TE
        g_thr_in_T1 = -(g_clean_TE * is_in_TE).sum(dim=1, keepdim=True)
        g_thr_out_T1 = -g_clean_TE.sum(dim=1, keepdim=True) - g_thr_in_T1
        for ids_T1, g_T1 in ((ids_in_T1, g_thr_in_T1), (ids_out_T1, g_thr_out_T1)):
            g_clean_TE.scatter_add_(1, ids_T1, g_T1)  # threshold = clean + noise * std there
            g_std_TE.scatter_add_(1, ids_T1, g_T1 * noise_TE.gather(1, ids_T1))
        g_raw_TE = g_std_TE.mul_(torch.sigmoid(raw_TE))  # d softplus = sigmoid
        return g_clean_TE, g_raw_TE, None, None, None, None, None, None


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

    def forward(self, x_TD: torch.Tensor, noise_TE: torch.Tensor | None = None) -> RoutingDecision:
        logits_TE = x_TD @ self.w_gate
        top = logits_TE.topk(self.cfg.k, dim=-1)
        w_TK = _softmax_weights(top.values, logits_TE, self.cfg.renormalize)
        tok, exp, w = _slot_major(top.indices, w_TK)
        return RoutingDecision(
            tok, exp, w, logits_TE, num_tokens=x_TD.shape[0], probs_fn=lambda: logits_TE.softmax(-1)
        )


class SwitchRouter(TopKRouter):
    """Top-1 (Fedus et al. 2021). The gate is the un-renormalised softmax probability, so the router
    is trained through the output, not only through the auxiliary loss."""


class ExpertChoiceRouter(Router):
    """Zhou et al. 2022: each expert takes its top C = k*T/E tokens by softmax score.

    Balanced by construction; a token may get zero or several experts. It looks at the whole batch,
    so it is not causal: mind this in autoregressive decoding.
    """

    def forward(self, x_TD: torch.Tensor, noise_TE: torch.Tensor | None = None) -> RoutingDecision:
        T, E = x_TD.shape[0], self.cfg.num_experts
        logits_TE = x_TD @ self.w_gate
        probs_TE = logits_TE.softmax(dim=-1)
        C = cast(int, self.cfg.capacity(T))  # expert choice always has one
        weights_EC, token_idx_EC = probs_TE.t().topk(C, dim=-1)
        expert_idx_A = torch.arange(E, device=x_TD.device).repeat_interleave(C)
        return RoutingDecision(
            token_idx_EC.reshape(-1),
            expert_idx_A,
            weights_EC.reshape(-1),
            logits_TE,
            probs_TE,
            num_tokens=T,
            expert_choice=True,
        )


class SigmoidBiasRouter(Router):
    """DeepSeek-V3: sigmoid affinities; a per-expert bias, used only to *select*, balances load.

    The bias is a buffer, never trained by gradient: `update_router_biases(model)` (a training hook,
    called after optimizer.step()) nudges it by gamma * sign(mean_load - load_i) using the loads
    accumulated since the previous update. Gate weights are the sigmoid scores of the chosen
    experts, normalised over the k (for k > 1) and multiplied by route_scale.
    """

    bias: torch.Tensor  # buffers (nn.Module's __getattr__ is typed Tensor | Module)
    load_accum: torch.Tensor

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("bias", torch.zeros(cfg.num_experts))
        self.register_buffer("load_accum", torch.zeros(cfg.num_experts), persistent=False)

    def forward(self, x_TD: torch.Tensor, noise_TE: torch.Tensor | None = None) -> RoutingDecision:
        logits_TE = x_TD @ self.w_gate
        scores_TE = logits_TE.sigmoid()
        with torch.no_grad():
            ids_TK = (scores_TE + self.bias).topk(self.cfg.k, dim=-1).indices
        w_TK = scores_TE.gather(1, ids_TK)
        if self.cfg.k > 1:
            w_TK = w_TK / w_TK.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        tok, exp, w = _slot_major(ids_TK, w_TK * self.cfg.route_scale)
        if self.training:
            self.load_accum += torch.bincount(exp, minlength=self.cfg.num_experts).to(
                self.load_accum
            )
        return RoutingDecision(
            tok,
            exp,
            w,
            logits_TE,
            num_tokens=x_TD.shape[0],
            probs_fn=lambda: scores_TE / scores_TE.sum(dim=-1, keepdim=True),
        )

    @torch.no_grad()
    def update_bias(self, group: mdist.ProcessGroup | None = None) -> None:
        """Nudge the bias by the loads accumulated since the last call, then reset them.

        group: a torch.distributed process group whose ranks' loads are summed first, so that
        every rank applies the same (global) update; every rank of it must call this. None: this
        process's loads only, no collective.
        """
        if group is not None:
            mdist.all_reduce_(self.load_accum, group)
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


def update_router_biases(model: nn.Module, group: mdist.ProcessGroup | None = None) -> None:
    """Training hook for aux-loss-free balancing: call after optimizer.step(). No-op for others.

    group: under data or expert parallelism, the process group (e.g. torch.distributed.group.WORLD)
    whose loads are summed before the update; None for one process.
    """
    for module in model.modules():
        if isinstance(module, SigmoidBiasRouter):
            module.update_bias(group)
