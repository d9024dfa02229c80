"""Watch an MoE layer learn to route (`mixkit demo`).

The data is a mixture of C clusters, each with its own random linear map. A dense FFN must fit all
maps at once; the MoE's router can learn to send each cluster to its own experts. `routing_demo`
trains both at equal active compute and returns the held-out loss of each, and which experts each
cluster ends up using.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mixkit.errors import ConfigError
from mixkit.moe import MoE, update_router_biases

D_MODEL, D_HIDDEN = 32, 32


@dataclass
class DemoResult:
    moe_mse: float  # held-out
    dense_mse: float
    moe_params: int
    moe_macs_per_token: int
    dense_params: int
    share: list[list[float]]  # [cluster][expert]: share of the cluster's assignments (held-out)
    router_entropy: float  # nats


StepCallback = Callable[[int, float, float, float], None]  # step, moe mse, dense mse, min/max load


class _Clusters:
    """C clusters in d dimensions, each with its own linear map: x -> (x, x @ map_c, c)."""

    def __init__(self, clusters: int, d: int):
        self.centers_CD = torch.randn(clusters, d) * 3
        self.maps_CDD = torch.randn(clusters, d, d) / d**0.5

    def batch(self, n: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c_N = torch.randint(len(self.centers_CD), (n,))
        x_ND = self.centers_CD[c_N] + torch.randn(n, self.centers_CD.shape[1])
        return x_ND, torch.einsum("nd,nde->ne", x_ND, self.maps_CDD[c_N]), c_N


def routing_demo(
    router: str = "noisy_topk",
    experts: int = 8,
    k: int = 2,
    steps: int = 300,
    clusters: int = 4,
    seed: int = 0,
    on_step: StepCallback | None = None,
) -> DemoResult:
    """Train an MoE layer and a dense FFN of equal active compute (width k * 32) on clustered
    data with Adam, then measure both on 4096 held-out points. `switch` forces k = 1."""
    if steps < 1:
        raise ConfigError(f"--steps ({steps}) must be >= 1")
    if clusters < 1:
        raise ConfigError(f"--clusters ({clusters}) must be >= 1")
    k = 1 if router == "switch" else k  # switch is top-1 by definition
    torch.manual_seed(seed)
    try:
        moe = MoE(D_MODEL, D_HIDDEN, experts, k=k, router=router)
    except ValueError as e:  # ConfigError is a ValueError too
        raise ConfigError(f"{e} (check --router, --experts and -k)") from None
    dense = torch.nn.Sequential(
        torch.nn.Linear(D_MODEL, k * D_HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(k * D_HIDDEN, D_MODEL),
    )
    data = _Clusters(clusters, D_MODEL)
    opt_moe = torch.optim.Adam(moe.parameters(), lr=3e-3)
    opt_dense = torch.optim.Adam(dense.parameters(), lr=3e-3)
    for step in range(steps):
        x, y, _ = data.batch()
        loss_moe = F.mse_loss(moe(x), y)
        opt_moe.zero_grad()
        (loss_moe + moe.aux_loss).backward()
        opt_moe.step()
        update_router_biases(moe)  # a no-op unless the router is sigmoid_bias
        loss_dense = F.mse_loss(dense(x), y)
        opt_dense.zero_grad()
        loss_dense.backward()
        opt_dense.step()
        if on_step is not None:
            load = moe.last_stats.tokens_per_expert
            balance = float(load.min() / load.max().clamp_min(1))
            on_step(step + 1, loss_moe.item(), loss_dense.item(), balance)
    return _held_out(moe, dense, data, experts, clusters)


@torch.no_grad()
def _held_out(
    moe: MoE, dense: torch.nn.Module, data: _Clusters, experts: int, clusters: int
) -> DemoResult:
    moe.eval()
    x, y, c_N = data.batch(4096)
    moe_mse = F.mse_loss(moe(x), y).item()
    dense_mse = F.mse_loss(dense(x), y).item()
    decision = moe.last_decision
    share = []
    for ci in range(clusters):
        mine = c_N[decision.token_idx_A] == ci
        counts = torch.bincount(decision.expert_idx_A[mine], minlength=experts).float()
        share.append((counts / counts.sum().clamp_min(1)).tolist())
    return DemoResult(
        moe_mse=moe_mse,
        dense_mse=dense_mse,
        moe_params=moe.num_parameters(),
        moe_macs_per_token=moe.active_macs_per_token(),
        dense_params=sum(p.numel() for p in dense.parameters()),
        share=share,
        router_entropy=float(moe.last_stats.router_entropy),
    )
