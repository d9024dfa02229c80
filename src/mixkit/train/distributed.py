"""Multi-process training: data parallelism for dense weights, expert parallelism for experts.

    torchrun --nproc_per_node 4 -m mixkit train --preset tiny --expert-parallel 2

W ranks form W/ep expert-parallel groups of ep consecutive ranks. Inside a group each rank holds
E/ep experts of every MoE layer and tokens travel by all_to_all (mixkit.moe.parallel); ranks with
the same position in different groups hold the same experts and average them like data-parallel
replicas. Every rank reads its own slice of a global batch of W x batch_size sequences.

Gradients. Each rank backpropagates its own loss (its batch's mean cross-entropy plus the aux loss
of its group's batch). Afterwards:
- a dense weight (embeddings, LSTMs, routers, shared experts) holds this rank's gradient: it is
  summed over all W ranks and divided by W (what DDP does), in one flat all_reduce;
- an expert weight already holds the sum over its expert-parallel group, which the backward
  all_to_all brought home; it is summed over its replicas (when ep < W) and divided by W.
Both then equal the gradient of the mean of the W ranks' losses, as one process would compute on
the global batch. Gradient clipping uses the global norm: the dense part is the same on every rank,
the expert part is summed over the group's shards.

Checkpoints have the single-process format: experts (and their optimizer state) are gathered before
rank 0 writes, and sliced again on load, so a run saved with N ranks continues with 1 and the reverse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mixkit import distributed as mdist
from mixkit.errors import ConfigError
from mixkit.moe import HierarchicalMoE, MoE
from mixkit.moe.parallel import expert_parameter_names, shard_experts


@dataclass
class ParallelContext:
    world: int
    rank: int
    ep_size: int
    ep_group: dist.ProcessGroup | None = None  # this rank's expert-parallel group
    replica_group: dist.ProcessGroup | None = (
        None  # ranks holding the same experts (None when ep == world)
    )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = ParallelContext(world=1, rank=0, ep_size=1)


def setup(expert_parallel: int = 1) -> ParallelContext:
    """Join torchrun's process group (if any) and build the expert-parallel groups."""
    if expert_parallel < 1:
        raise ConfigError(f"--expert-parallel ({expert_parallel}) must be >= 1")
    if not mdist.init_from_env():
        if expert_parallel > 1:
            raise ConfigError(
                f"--expert-parallel {expert_parallel} needs {expert_parallel} processes: run "
                f"`torchrun --nproc_per_node {expert_parallel} -m mixkit train ...`"
            )
        return SINGLE
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % expert_parallel:
        raise ConfigError(
            f"--expert-parallel ({expert_parallel}) must divide the number of processes ({world})"
        )
    ep = expert_parallel
    ctx = ParallelContext(world, rank, ep)
    with mdist.collective("new_group"):
        for start in range(0, world, ep):  # every rank creates every group, in the same order
            g = dist.new_group(list(range(start, start + ep)))
            if start <= rank < start + ep:
                ctx.ep_group = g
        if ep < world:
            for offset in range(ep):
                g = dist.new_group(list(range(offset, world, ep)))
                if rank % ep == offset:
                    ctx.replica_group = g
    return ctx


def parallelize(model: nn.Module, ctx: ParallelContext) -> nn.Module:
    """Shard the experts over ctx's expert-parallel group (when ep_size > 1) and make every MoE
    layer's balancing losses cover the global batch (its routing statistics summed over all ranks).
    Call it on identically initialised models on every rank, before building the optimizer."""
    if not ctx.distributed:
        return model
    # A HierarchicalMoE's groups run only on ranks that routed tokens to them, so they cannot
    # take part in collectives: its losses stay per rank under data parallelism.
    nested = {id(g) for h in model.modules() if isinstance(h, HierarchicalMoE) for g in h.groups}
    layers = [m for m in model.modules() if isinstance(m, MoE) and id(m) not in nested]
    if ctx.ep_size > 1:
        if nested:
            raise ConfigError(
                f"--expert-parallel {ctx.ep_size}: a hierarchical MoE (model.moe.groups) is not "
                "expert-parallel yet; use --expert-parallel 1 for data parallelism"
            )
        if not layers:
            raise ConfigError(
                f"--expert-parallel {ctx.ep_size} needs a model with MoE layers; this one is dense "
                "(use --expert-parallel 1 for data parallelism)"
            )
        shard_experts(model, ctx.ep_group)
    for layer in layers:
        layer.set_stats_group(None)  # the whole world: every rank's batch
    return model


def default_threads(ctx: ParallelContext) -> int:
    """Split the cores among the ranks on this machine (oversubscribed threads spin-wait)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(dense, expert-parallel) trainable parameters of the model."""

    names = expert_parameter_names(model)
    dense, experts = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (experts if n in names else dense).append(p)
    return dense, experts


def reduce_gradients(model: nn.Module, ctx: ParallelContext) -> None:
    """Turn each rank's gradients into the gradient of the mean loss over all ranks."""
    if not ctx.distributed:
        return
    dense, experts = split_params(model)
    _sum_and_scale(dense, ctx, sum_over_ranks=True, group=None)  # every rank
    _sum_and_scale(
        experts, ctx, sum_over_ranks=ctx.replica_group is not None, group=ctx.replica_group
    )


def _sum_and_scale(
    params: list[nn.Parameter], ctx: ParallelContext, sum_over_ranks: bool, group
) -> None:
    """Optionally sum the gradients over `group` in one flat all_reduce; divide by the world."""
    for p in params:
        if p.grad is None:  # a parameter this rank's batch did not reach still takes part
            p.grad = torch.zeros_like(p)
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    if sum_over_ranks:
        mdist.all_reduce_(flat, group)
    flat /= ctx.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def clip_grad_norm(model: nn.Module, max_norm: float, ctx: ParallelContext) -> float:
    """clip_grad_norm_ over the whole (sharded) model; returns the global norm before clipping.

    Dense gradients are the same on every rank after reduce_gradients; expert gradients are
    sharded, so their squared norm is summed over the expert-parallel group."""
    if not ctx.distributed:
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    dense, experts = split_params(model)
    dev = mdist.device()  # NCCL reduces GPU tensors only

    def squared_norm(params) -> torch.Tensor:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros((), dtype=torch.float64, device=dev)
        return torch.nn.utils.get_total_norm(grads).double().to(dev) ** 2

    expert_sq = squared_norm(experts)
    if ctx.ep_size > 1:
        mdist.all_reduce_(expert_sq, ctx.ep_group)
    norm = (squared_norm(dense) + expert_sq).sqrt()
    torch.nn.utils.clip_grads_with_norm_(dense + experts, max_norm, norm)
    return float(norm)


def mean_over_ranks(values: list[float], ctx: ParallelContext) -> list[float]:
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=mdist.device())
    mdist.all_reduce_(t)
    return (t / ctx.world).tolist()


def check_same_config(config: dict, ctx: ParallelContext) -> None:
    if ctx.distributed:
        flat = {}

        def walk(prefix, d):
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                else:
                    flat[f"{prefix}{k}"] = v

        walk("", config)
        mdist.check_same("the training configuration", flat)


def barrier(ctx: ParallelContext) -> None:
    if ctx.distributed:
        with mdist.collective("barrier"):
            dist.barrier()
