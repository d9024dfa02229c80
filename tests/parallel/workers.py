"""Functions that run inside each rank (imported by spawned processes, so module level)."""

from __future__ import annotations

import copy
import os
import time

import torch
import torch.distributed as dist

from mixkit.moe import MoE
from mixkit.moe.parallel import expert_parallel_of, shard_experts
from tests.moe.conftest import make_layer

D, H = 6, 10


def tokens_per_rank(world: int) -> list[int]:
    return [7 + 3 * r for r in range(world)]  # unequal on purpose


def make_full_layer(router: str, E: int, capacity_factor, shared: int = 0) -> MoE:
    """Random router weights (see tests/moe), every loss on, float64."""
    options = dict(w_importance=0.1, w_load=0.1, w_switch=0.01, w_zloss=0.001)
    if shared:
        options["num_shared_experts"] = shared
    return make_layer(
        router, d=D, h=H, E=E, dtype=torch.float64, capacity_factor=capacity_factor, **options
    )


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

        where = expert_parallel_of(ep)
        first, El = where.first_expert, where.local_experts
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


def hangs(rank: int, world: int) -> str:
    if rank == 1:
        time.sleep(600)
    return "no error"


# --- training ---------------------------------------------------------------------------------
def train_step_equivalence(
    rank: int, world: int, ep_size: int, router: str, arch: str = "lstm"
) -> dict:
    """One training step's gradients under data + expert parallelism vs one process on the global
    batch: after reduce_gradients every rank holds the global gradient (its shard of it for
    experts), and the clipping norm is the global norm."""
    import torch.nn.functional as F

    from mixkit.models import build_model
    from mixkit.train import distributed as tdist
    from mixkit.train import load_config

    ctx = tdist.setup(ep_size)
    sets = [f"model.moe.router='{router}'", "model.dropout=0.0"]
    if router == "switch":
        sets.append("model.moe.k=1")
    cfg = load_config("tiny", overrides=sets).model
    update = {"vocab_size": 40}
    if arch == "transformer":
        cfg = load_config("shakespeare-transformer-moe", overrides=sets).model
        update.update(d_model=32, n_heads=2, n_layers=2, block_size=12, ffn_hidden=48)
        update["moe"] = cfg.moe.model_copy(update={"d_hidden": 24})
    cfg = cfg.model_copy(update=update)
    torch.manual_seed(0)
    full = build_model(cfg).double()
    model = tdist.parallelize(copy.deepcopy(full), ctx)
    B_local, T = 3, 12
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, 40, (B_local * world, T + 1), generator=g)
    x, y = idx[:, :-1], idx[:, 1:]

    def loss_of(m, xb, yb):
        logits = m(xb)
        return F.cross_entropy(logits.flatten(0, 1), yb.flatten()) + m.aux_loss()

    loss_of(full, x, y).backward()
    full_norm = float(torch.nn.utils.clip_grad_norm_(full.parameters(), float("inf")))
    lo, hi = rank * B_local, (rank + 1) * B_local
    loss_of(model, x[lo:hi], y[lo:hi]).backward()
    tdist.reduce_gradients(model, ctx)
    norm = tdist.clip_grad_norm(model, float("inf"), ctx)

    errs = {"grad_norm": abs(norm - full_norm) / full_norm}
    full_params = dict(full.named_parameters())
    for _, layer in model.moe_layers():
        where = expert_parallel_of(layer)
        if where is not None:
            first, El = where.first_expert, where.local_experts
    from mixkit.moe.parallel import expert_parameter_names

    expert_names = expert_parameter_names(model)
    for name, p in model.named_parameters():
        ref = full_params[name].grad
        if name in expert_names:
            ref = ref[first : first + El]
        errs[name] = _max_err(p.grad, ref)
    errs["num_expert_params"] = len(expert_names)
    return errs


def hierarchical(rank: int, world: int) -> str:
    from mixkit.moe import HierarchicalMoE

    shard_experts(HierarchicalMoE(D, H, num_groups=2, experts_per_group=2))
    return "no error"
