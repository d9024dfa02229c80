"""Expert parallelism: the E experts of an MoE split over the ranks of a process group.

Legend: T local tokens, Tg tokens of the whole group, D d_model, E experts, El = E / R experts per
rank, R ranks, A local assignments, N assignments received by this rank's experts.

    layer = MoE(d_model, d_hidden, num_experts=64, k=2)     # same seed on every rank
    shard_experts(layer, group)                              # keep experts [r*El, (r+1)*El)
    y = layer(x_local)                                       # tokens travel by all_to_all

Each rank routes its own tokens with its own (replicated) router. The assignments are sorted by
expert, which also groups them by destination rank, because rank r holds a contiguous block of
experts. Per-rank counts go first (one all_to_all of R*El integers), then the token rows, each
carrying its gate weight as an extra column, so one all_to_all moves both and the gate keeps its
gradient. The receiving rank regroups rows by local expert, applies the capacity in the same
priority order one process would use on the whole batch (first choices before second choices,
then token order across ranks), runs its grouped FFN, and the results return by the reverse
all_to_all. Dropped assignments come back as zeros.

The result equals the single-process layer on the concatenated batch: outputs, input gradients,
expert-weight gradients and, because the balancing statistics (importance, load, switch, z) are
summed over the group before the losses are taken, the aux loss too. Expert choice picks each
expert's top C over the whole group's tokens: the routing probabilities are all-gathered (no
gradient), and each rank keeps the picks of its own tokens, weighted by its local probabilities.

Gradient bookkeeping for training: expert weights already receive the sum over the group of every
rank's loss gradient (the backward all_to_all brings them home); dense weights (router, shared
experts, the rest of the model) need the usual data-parallel all_reduce. See
`mixkit.train.distributed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from torch import nn

from mixkit import distributed as mdist
from mixkit.errors import ConfigError
from mixkit.moe.dispatch import LocalDispatcher, Route, Routed, keep_within_capacity
from mixkit.moe.experts import Experts
from mixkit.moe.hierarchical import HierarchicalMoE
from mixkit.moe.layer import MoE
from mixkit.moe.routing import Router, RoutingDecision


@dataclass
class ExpertParallel:
    """Where this rank sits in its expert-parallel group."""

    group: dist.ProcessGroup | None  # None: the default group
    rank: int
    size: int
    num_experts: int

    @property
    def local_experts(self) -> int:
        return self.num_experts // self.size

    @property
    def first_expert(self) -> int:
        return self.rank * self.local_experts

    def token_layout(self, num_tokens: int, device: torch.device) -> tuple[int, int, list[int]]:
        """(offset of this rank's tokens in the group batch, group batch size, all ranks' T)."""
        t = torch.tensor([num_tokens], dtype=torch.int64, device=device)
        out = [torch.zeros_like(t) for _ in range(self.size)]
        with mdist.collective("all_gather of token counts", self.group, nbytes=8):
            dist.all_gather(out, t, group=self.group)
        sizes = [int(v) for v in out]
        return sum(sizes[: self.rank]), sum(sizes), sizes

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return mdist.all_reduce_sum(x, self.group)


def expert_choice_decision(
    router: Router, x_TD: torch.Tensor, ep: ExpertParallel, offset: int, sizes: list[int]
) -> RoutingDecision:
    """Expert choice over the whole group's batch: expert e takes its top C of Tg tokens."""
    T, E = x_TD.shape[0], router.cfg.num_experts
    logits_TE = x_TD @ router.w_gate
    probs_TE = logits_TE.softmax(dim=-1)
    Tg, Tmax = sum(sizes), max(sizes)
    with torch.no_grad():  # selection only; the weights below come from the local probabilities
        padded = probs_TE.new_zeros(Tmax, E)
        padded[:T] = probs_TE.detach()
        parts = [torch.empty_like(padded) for _ in range(ep.size)]
        with mdist.collective(
            "all_gather of router probabilities",
            ep.group,
            nbytes=padded.numel() * padded.element_size(),
        ):
            dist.all_gather(parts, padded, group=ep.group)
        probs_all = torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])  # (Tg, E)
        C = cast(int, router.cfg.capacity(Tg))  # expert choice always has one
        token_EC = probs_all.t().topk(C, dim=-1).indices  # (E, C), as one process would pick
        expert_EC = torch.arange(E, device=x_TD.device).unsqueeze(1).expand(E, C)
        mine = (token_EC >= offset) & (token_EC < offset + T)
        token_idx_A = token_EC[mine] - offset  # expert-major, like the local router
        expert_idx_A = expert_EC[mine]
    weight_A = probs_TE[token_idx_A, expert_idx_A]
    return RoutingDecision(
        token_idx_A, expert_idx_A, weight_A, logits_TE, probs_TE, num_tokens=T, expert_choice=True
    )


class AllToAllDispatcher:
    """Token rows to the rank that holds their expert and back, with capacity applied there.

    The same two methods as the local dispatcher (see dispatch.Dispatcher); its run() wraps the
    experts because capacity is applied on the receiving rank, between the two exchanges.
    """

    def __init__(self, ep: ExpertParallel) -> None:
        self.ep = ep
        # The sending side is the local dispatcher, dropless: sort by expert (which also groups the
        # rows by destination rank), gather, and later combine what comes back.
        self.local = LocalDispatcher(ep.num_experts)
        self.reduce_stats: Callable[[torch.Tensor], torch.Tensor] | None = (
            ep.all_reduce_sum
        )  # the losses cover the whole group's batch

    def route(self, router: Router, x_TD: torch.Tensor, noise_TE: torch.Tensor | None) -> Route:
        """The local router on this rank's tokens; expert choice and capacity look at the group."""
        cfg, T = router.cfg, x_TD.shape[0]
        if cfg.router == "expert_choice" or cfg.capacity_factor is not None:
            offset, group_tokens, sizes = self.ep.token_layout(T, x_TD.device)
        else:  # dropless token choice needs neither the offsets nor the group's token count
            offset, group_tokens, sizes = 0, T, [T]
        if cfg.router == "expert_choice":
            decision = expert_choice_decision(router, x_TD, self.ep, offset, sizes)
        else:
            decision = router(x_TD, noise_TE)
        return Route(decision, cfg.capacity(group_tokens), offset, group_tokens)

    def run(
        self, x_TD: torch.Tensor, route: Route, experts: Experts, impl: str
    ) -> tuple[torch.Tensor, Routed]:
        decision, capacity = route.decision, route.capacity
        offset, group_tokens = route.token_offset, route.batch_tokens
        ep = self.ep
        R, El, E = ep.size, ep.local_experts, ep.num_experts
        T, D = x_TD.shape
        A = decision.expert_idx_A.numel()
        x_SD, _, plan = self.local.dispatch(x_TD, decision, None)  # (A, D), sorted by expert
        token_S = plan.token_idx_S
        send_counts_RE = plan.counts_E.view(R, El)
        recv_counts_RE = mdist.all_to_all(
            send_counts_RE.reshape(-1), [El] * R, [El] * R, ep.group
        ).view(R, El)
        send_splits = send_counts_RE.sum(1).tolist()
        recv_splits = recv_counts_RE.sum(1).tolist()

        payload = torch.cat([x_SD, plan.weight_S.to(x_TD.dtype).unsqueeze(1)], dim=1)
        recv_ND1 = mdist.all_to_all(payload, recv_splits, send_splits, ep.group)  # (N, D+1)
        N = recv_ND1.shape[0]
        local_expert_N = torch.repeat_interleave(
            torch.arange(El, device=x_TD.device).repeat(R), recv_counts_RE.reshape(-1)
        )
        limited = capacity is not None and not decision.expert_choice
        if limited:
            # One process on the whole batch keeps, per expert, the first `capacity` assignments in
            # slot-major order: slot, then the token's position in the group batch.
            slot_S = torch.zeros_like(token_S)  # the slot of each sorted assignment
            if plan.row_A is not None:
                slot_S[plan.row_A] = torch.arange(A, device=x_TD.device) // T
            key_S = slot_S * group_tokens + offset + token_S
            key_N = mdist.all_to_all(key_S, recv_splits, send_splits, ep.group)
            span = max(1, A // max(T, 1)) * group_tokens
            sort_N = torch.argsort(local_expert_N * span + key_N)
        else:
            sort_N = torch.argsort(local_expert_N, stable=True)
        counts_El = torch.bincount(local_expert_N, minlength=El)
        num_dropped = 0
        if limited and N and int(counts_El.max()) > cast(int, capacity):  # limited: not None
            keep_N, counts_El, num_dropped = keep_within_capacity(
                local_expert_N[sort_N], counts_El, cast(int, capacity)
            )
            sort_N = sort_N[keep_N]
        rows = recv_ND1.index_select(0, sort_N)
        out_KD = experts(rows[:, :D], counts_El.tolist(), impl, scale_A=rows[:, D])
        back_ND = out_KD.new_zeros(N, D).index_copy(0, sort_N, out_KD)  # dropped rows stay zero
        out_SD = mdist.all_to_all(back_ND, send_splits, recv_splits, ep.group)  # (A, D)
        y_TD = self.local.combine(out_SD, plan)
        counts_E = torch.zeros(E, dtype=counts_El.dtype, device=x_TD.device)
        counts_E[ep.first_expert : ep.first_expert + El] = counts_El
        return y_TD, Routed(counts_E, num_dropped, token_S)


# --- set-up -----------------------------------------------------------------------------------
def _moe_layers(module: nn.Module) -> list[tuple[str, MoE]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, MoE)]


def expert_parallel_of(layer: nn.Module) -> ExpertParallel | None:
    """Where this MoE layer's experts are split, or None when they all live in this process."""
    dispatcher = getattr(layer, "dispatcher", None)
    return dispatcher.ep if isinstance(dispatcher, AllToAllDispatcher) else None


def shard_experts(module: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Make every MoE in `module` expert-parallel over `group` (default: the whole world), in place.

    Call it on identically initialised modules on every rank (same seed, same config): each rank
    keeps its block of E/R experts, and the others' weights are freed. Raises ConfigError when E is
    not divisible by the group size or when the ranks' configs differ.
    """
    if not mdist.is_initialized():
        raise ConfigError(
            "expert parallelism needs torch.distributed: run under torchrun, or call "
            "torch.distributed.init_process_group first"
        )
    R, r = dist.get_world_size(group), dist.get_rank(group)
    if any(isinstance(m, HierarchicalMoE) for m in module.modules()):
        # its groups run only on ranks that routed tokens to them, so collectives would not match
        raise ConfigError(
            "HierarchicalMoE is not expert-parallel yet; use MoE layers, or data parallelism "
            "(--expert-parallel 1)"
        )
    layers = _moe_layers(module)
    mdist.check_same(
        "the MoE configuration",
        {name or "moe": repr(sorted(layer.cfg.to_dict().items())) for name, layer in layers},
        group,
    )
    for name, layer in layers:
        E = layer.cfg.num_experts
        if E % R:
            raise ConfigError(
                f"{name or 'moe'}.num_experts ({E}) is not divisible by the expert-parallel size ({R}); "
                f"choose a size that divides {E}"
            )
        if expert_parallel_of(layer) is not None:
            raise ConfigError(f"{name or 'moe'} is already expert-parallel")
        ep = ExpertParallel(group, r, R, E)
        _slice_experts(layer.experts, ep.first_expert, ep.local_experts)
        layer.dispatcher = AllToAllDispatcher(ep)
    return module


def _slice_experts(experts: Experts, first: int, count: int) -> None:
    for pname, p in list(experts.named_parameters(recurse=False)):
        new = nn.Parameter(p.detach()[first : first + count].clone(), requires_grad=p.requires_grad)
        setattr(experts, pname, new)
    experts.num_experts = count


def expert_parameter_names(module: nn.Module) -> set[str]:
    """Names (as in module.named_parameters()) of the expert-parallel (sharded) parameters."""
    names = set()
    for lname, layer in _moe_layers(module):
        if expert_parallel_of(layer) is None:
            continue
        for pname, _ in layer.experts.named_parameters():
            names.add(f"{lname}.experts.{pname}" if lname else f"experts.{pname}")
    return names


def _gather_dim0(shard: torch.Tensor, ep: ExpertParallel) -> torch.Tensor:
    parts = [torch.empty_like(shard) for _ in range(ep.size)]
    with mdist.collective("all_gather of expert weights", ep.group):
        dist.all_gather(parts, shard.contiguous(), group=ep.group)
    return torch.cat(parts)


def _sharded_tensors(module: nn.Module) -> Iterator[tuple[str, nn.Parameter, ExpertParallel]]:
    """(full name, parameter, ExpertParallel) for every sharded parameter."""
    for lname, layer in _moe_layers(module):
        ep = expert_parallel_of(layer)
        if ep is None:
            continue
        for pname, p in layer.experts.named_parameters():
            yield (f"{lname}.experts.{pname}" if lname else f"experts.{pname}"), p, ep


@contextlib.contextmanager
def gathered_experts(module: nn.Module) -> Iterator[None]:
    """Inside the block every sharded expert parameter holds all E experts (for saving)."""
    saved = []
    for _, p, ep in _sharded_tensors(module):
        saved.append((p, p.data))
        p.data = _gather_dim0(p.data, ep)
    try:
        yield
    finally:
        for p, data in saved:
            p.data = data


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with each sharded parameter's state gathered to all E experts."""
    return _map_expert_state(
        module,
        optimizer,
        optimizer.state_dict(),
        lambda v, p, ep: _gather_dim0(v, ep) if v.shape[0] == p.shape[0] else v,
    )


def shard_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, sd: dict) -> dict:
    """The inverse of full_optimizer_state: keep this rank's experts of a full state dict."""

    def keep_mine(value: torch.Tensor, p: nn.Parameter, ep: ExpertParallel) -> torch.Tensor:
        if value.shape[0] != ep.num_experts:
            return value
        return value[ep.first_expert : ep.first_expert + ep.local_experts].clone()

    return _map_expert_state(module, optimizer, sd, keep_mine)


def _map_expert_state(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    sd: dict,
    fn: Callable[[torch.Tensor, nn.Parameter, ExpertParallel], torch.Tensor],
) -> dict:
    """Apply fn(value, param, ep) to every per-expert tensor (exp_avg, ...) of sharded params."""
    index = _param_index(optimizer)
    for _, p, ep in _sharded_tensors(module):
        state = sd["state"].get(index[id(p)])
        for key, value in list((state or {}).items()):
            if torch.is_tensor(value) and value.dim() > 0:
                state[key] = fn(value, p, ep)
    return sd


def _param_index(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    index, i = {}, 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            index[id(p)] = i
            i += 1
    return index
