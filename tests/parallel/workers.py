"""Functions that run inside each rank (imported by spawned processes, so module level)."""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist

from mixkit.moe import MoE
from mixkit.moe.parallel import shard_experts

D, H = 6, 10


def tokens_per_rank(world: int) -> list[int]:
    return [7 + 3 * r for r in range(world)]  # unequal on purpose


def make_full_layer(router: str, E: int, capacity_factor, shared: int = 0) -> MoE:
    torch.manual_seed(0)
    k = 1 if router == "switch" else 2
    options = dict(w_importance=0.1, w_load=0.1, w_switch=0.01, w_zloss=0.001)
    if shared:
        options["num_shared_experts"] = shared
    layer = MoE(D, H, E, k=k, router=router, capacity_factor=capacity_factor, **options).double()
    with torch.no_grad():
        layer.router.w_gate.normal_(0, 1.0)
        if router == "noisy_topk":
            layer.router.w_noise.normal_(0, 0.5)
        if router == "sigmoid_bias":
            layer.router.bias.normal_(0, 0.3)
    return layer


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max()) if a.numel() else 0.0


def equivalence(rank: int, world: int, cases: list[tuple], E: int = 8) -> dict:
    """Expert-parallel layer vs the single-process layer on the same global batch, per case.

    Returns {case: {check: max abs error}}; the single-process run happens on every rank.
    """
    sizes = tokens_per_rank(world)
    Tg, lo = sum(sizes), sum(sizes[:rank])
    hi = lo + sizes[rank]
    report = {}
    for router, capacity_factor, mode, shared in cases:
        full = make_full_layer(router, E, capacity_factor, shared)
        full.train(mode == "train")
        ep = shard_experts(copy.deepcopy(full))
        g = torch.Generator().manual_seed(42)
        x = torch.randn(Tg, D, generator=g, dtype=torch.float64)
        noise = torch.randn(Tg, E, generator=g, dtype=torch.float64)
        upstream = torch.randn(Tg, D, generator=g, dtype=torch.float64)

        x_full = x.clone().requires_grad_()
        y_full = full(x_full, noise)
        ((y_full * upstream).sum() + full.aux_loss).backward()

        x_local = x[lo:hi].clone().requires_grad_()
        y_local = ep(x_local, noise[lo:hi])
        # Each rank's loss holds the group-wide aux loss once; the group's total counts it once.
        ((y_local * upstream[lo:hi]).sum() + ep.aux_loss / world).backward()

        first, El = ep.ep.first_expert, ep.ep.local_experts
        errs = {
            "output": _max_err(y_local, y_full[lo:hi]),
            "input_grad": _max_err(x_local.grad, x_full.grad[lo:hi]),
            "aux_loss": _max_err(ep.aux_loss.detach(), full.aux_loss.detach()),
            "tokens_per_expert": _max_err(
                ep.last_stats.tokens_per_expert,
                full.last_stats.tokens_per_expert.to(ep.last_stats.tokens_per_expert),
            ),
            "dropped_fraction": abs(
                float(ep.last_stats.dropped_fraction) - float(full.last_stats.dropped_fraction)
            ),
            "router_entropy": abs(
                float(ep.last_stats.router_entropy) - float(full.last_stats.router_entropy)
            ),
        }
        for name, value in full.last_stats.losses.items():
            errs[name] = abs(float(ep.last_stats.losses[name]) - float(value))
        for pname, p in ep.experts.named_parameters():
            errs[f"expert_grad.{pname}"] = _max_err(
                p.grad, getattr(full.experts, pname).grad[first : first + El]
            )
        # dense weights: data parallel sums the ranks' gradients
        full_params = dict(full.named_parameters())
        for pname, p in ep.named_parameters():
            if pname.startswith("experts."):
                continue
            grad = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(grad)
            ref = full_params[pname].grad
            errs[f"dense_grad.{pname}"] = _max_err(
                grad, ref if ref is not None else torch.zeros_like(grad)
            )
        errs["dropped_any"] = float(full.last_stats.dropped_fraction)
        report[f"{router}/cf={capacity_factor}/{mode}/shared={shared}"] = errs
    return report


def not_divisible(rank: int, world: int, E: int) -> str:
    layer = make_full_layer("topk", E, None)
    shard_experts(layer)
    return "no error"


def mismatched(rank: int, world: int) -> str:
    layer = make_full_layer("topk", 8, None if rank == 0 else 1.25)
    shard_experts(layer)
    return "no error"


def dies(rank: int, world: int) -> str:
    layer = shard_experts(make_full_layer("topk", 8, None))
    if rank == world - 1:
        os._exit(3)  # a crash: no clean shutdown, no exception
    layer(torch.randn(5, D, dtype=torch.float64))
    return "no error"
