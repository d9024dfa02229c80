"""A plain, slow reference of the MoE layer, written from the papers' formulas, for the tests.

It shares only parameters with `MoE`: routing is recomputed per token with dense gate matrices,
capacity with explicit counters, every expert with a per-expert loop, and the load estimator with
an explicit kth_excluding. Keep it simple rather than fast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mixkit.moe.layer import MoE


def _phi(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def _ffn(layer: MoE, e: int, x_nD: torch.Tensor, shared: bool = False) -> torch.Tensor:
    ex = layer.shared_experts if shared else layer.experts
    h = x_nD @ ex.w_in[e]
    h = F.silu(x_nD @ ex.w_gate[e]) * h if ex.w_gate is not None else F.relu(h)
    return h @ ex.w_out[e]


def reference_moe(layer: MoE, x: torch.Tensor, router_noise: torch.Tensor | None = None) -> dict:
    """Returns y, aux_loss, the unweighted losses, kept counts per expert and the dropped count."""
    cfg = layer.cfg
    r = layer.router
    E, k = cfg.num_experts, cfg.k
    x_TD = x.reshape(-1, cfg.d_model)
    T = x_TD.shape[0]
    clean = x_TD @ r.w_gate  # (T, E)
    gates = torch.zeros(T, E, dtype=x.dtype)  # dense G(x), before capacity
    chosen: list[list[int]] = []  # per token, its experts in preference order
    load = None

    if cfg.router == "expert_choice":
        probs = torch.softmax(clean, dim=-1)
        C = cfg.capacity(T)
        kept = []  # (token, expert, weight)
        for e in range(E):
            order = sorted(range(T), key=lambda t: -probs[t, e].item())[:C]
            for t in order:
                kept.append((t, e, probs[t, e]))
        counts = [C] * E
        num_dropped = 0
    else:
        if cfg.router == "noisy_topk":
            H = clean
            if layer.training:
                std = F.softplus(x_TD @ r.w_noise) + cfg.noise_eps
                H = clean + router_noise * std
            select, probs = H, torch.softmax(H, dim=-1)
        elif cfg.router == "sigmoid_bias":
            scores = torch.sigmoid(clean)
            select, probs = scores.detach() + r.bias, scores / scores.sum(-1, keepdim=True)
        else:
            select, probs = clean, torch.softmax(clean, dim=-1)
        for t in range(T):
            order = sorted(range(E), key=lambda e: -select[t, e].item())[:k]
            chosen.append(order)
            if cfg.router == "noisy_topk":
                raw = [torch.exp(H[t, e]) for e in order]  # softmax over the kept k (k=1: over all)
                denom = sum(raw) if k > 1 else torch.exp(H[t]).sum()
                ws = [v / denom for v in raw]
            elif cfg.router == "sigmoid_bias":
                raw = [scores[t, e] for e in order]
                denom = sum(raw) if k > 1 else 1.0
                ws = [v / denom * cfg.route_scale for v in raw]
            else:
                raw = [probs[t, e] for e in order]
                denom = sum(raw) if (k > 1 and cfg.renormalize) else 1.0
                ws = [v / denom for v in raw]
            for e, w in zip(order, ws, strict=True):
                gates[t, e] = w
        if cfg.router == "noisy_topk" and layer.training:
            load = torch.zeros(T, E, dtype=x.dtype)
            for t in range(T):
                for i in range(E):
                    if k >= E:
                        load[t, i] = 1.0
                        continue
                    others = sorted(
                        (H[t, j] for j in range(E) if j != i), key=lambda v: v.item(), reverse=True
                    )
                    kth_excluding = others[k - 1]  # a tensor: the gradient flows through it too
                    load[t, i] = _phi((clean[t, i] - kth_excluding) / std[t, i])
        # capacity: first choices of every token, then second choices ..., each in token order
        C = cfg.capacity(T)
        counts = [0] * E
        kept = []
        num_dropped = 0
        for slot in range(k):
            for t in range(T):
                e = chosen[t][slot]
                if C is not None and counts[e] >= C:
                    num_dropped += 1
                    continue
                counts[e] += 1
                kept.append((t, e, gates[t, e]))

    y = torch.zeros_like(x_TD)
    for e in range(E):
        mine = [(t, w) for (t, ee, w) in kept if ee == e]
        if not mine:
            continue
        toks = torch.tensor([t for t, _ in mine])
        out = _ffn(layer, e, x_TD[toks])
        for row, (t, w) in enumerate(mine):
            y[t] = y[t] + w * out[row]
    for e in range(cfg.num_shared_experts):
        y = y + _ffn(layer, e, x_TD, shared=True)

    def cv2(v):
        return ((v - v.mean()) ** 2).mean() / (v.mean() ** 2 + 1e-10)

    if cfg.router == "expert_choice":
        importance = torch.zeros(E, dtype=x.dtype)
        for _t, e, w in kept:
            importance[e] = importance[e] + w
        hard_counts = torch.tensor(counts, dtype=x.dtype)
    else:
        importance = gates.sum(0)
        hard_counts = torch.zeros(E, dtype=x.dtype)
        for order in chosen:
            for e in order:
                hard_counts[e] += 1
    load_E = load.sum(0) if load is not None else hard_counts
    fraction = hard_counts / hard_counts.sum()
    losses = {
        "importance_loss": cv2(importance),
        "load_loss": cv2(load_E),
        "switch_loss": E * (fraction * probs.mean(0)).sum(),
        "z_loss": (torch.logsumexp(clean, dim=-1) ** 2).mean(),
    }
    aux = (
        cfg.w_importance * losses["importance_loss"]
        + cfg.w_load * losses["load_loss"]
        + cfg.w_switch * losses["switch_loss"]
        + cfg.w_zloss * losses["z_loss"]
    )
    return {
        "y": y.reshape(x.shape),
        "aux_loss": aux,
        "losses": losses,
        "counts": counts,
        "num_dropped": num_dropped,
        "load_TE": load,
    }
