"""torch.distributed plumbing shared by expert parallelism and multi-process training.

    from mixkit import distributed as mdist
    mdist.init_from_env()          # under torchrun: gloo on CPU, NCCL on GPU, every collective timed
    mdist.world_size(), mdist.rank()

Every collective mixkit issues goes through `collective(...)`, which turns the backend's failure
(a peer rank that died, or a collective that passed the process group's timeout) into a
`DistributedError` naming the operation, the rank and the timeout, instead of a hang or a C++
stack. The autograd collectives here (`all_to_all`, `all_reduce_sum`) are what expert parallelism
differentiates through.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.distributed as dist

from mixkit.errors import ConfigError, MixkitError

ProcessGroup = dist.ProcessGroup  # None where a function takes one: the default group

DEFAULT_TIMEOUT_S = 120.0


class DistributedError(MixkitError):
    """A collective failed or timed out: a peer rank died, hung, or disagrees about the set-up."""


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size(group: ProcessGroup | None = None) -> int:
    return dist.get_world_size(group) if is_initialized() else 1


def rank(group: ProcessGroup | None = None) -> int:
    return dist.get_rank(group) if is_initialized() else 0


def timeout_s() -> float:
    return float(os.environ.get("MIXKIT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def pick_backend() -> str:
    """NCCL when this process has a GPU, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def init_from_env(backend: str = "auto", timeout: float | None = None) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    Returns False (and does nothing) for a plain single process. `timeout` (seconds; default
    $MIXKIT_DIST_TIMEOUT or 120) bounds every collective, so a dead peer is an error, not a hang.
    """
    if is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = pick_backend() if backend == "auto" else backend
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    seconds = timeout if timeout is not None else timeout_s()
    with collective("init_process_group"):
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=seconds))
    return True


def destroy() -> None:
    """Leave the process group if in one; a dead peer may make that fail, which is ignored."""
    if is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def device() -> torch.device:
    """The device this rank computes on: its GPU under NCCL, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class CommRecord:
    """Seconds and bytes sent per collective, filled while `record_comm()` is active."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.bytes_sent: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def add(self, what: str, seconds: float, nbytes: int) -> None:
        self.seconds[what] = self.seconds.get(what, 0.0) + seconds
        self.bytes_sent[what] = self.bytes_sent.get(what, 0) + nbytes
        self.calls[what] = self.calls.get(what, 0) + 1

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_sent.values())


_recorders: list[CommRecord] = []


@contextlib.contextmanager
def record_comm() -> Iterator[CommRecord]:
    """Time every mixkit collective in the block (for benchmarks):

    with record_comm() as rec:
        loss.backward()
    rec.seconds["all_to_all"], rec.bytes_sent["all_to_all"]
    """
    rec = CommRecord()
    _recorders.append(rec)
    try:
        yield rec
    finally:
        _recorders.remove(rec)


@contextlib.contextmanager
def collective(what: str, group: ProcessGroup | None = None, nbytes: int = 0) -> Iterator[None]:
    """Re-raise a backend failure inside the block as a DistributedError that says what to do.

    `nbytes` (what this rank sends) and the block's time go to any active `record_comm()`.
    """
    t0 = time.perf_counter() if _recorders else 0.0
    try:
        yield
        if _recorders:
            if is_initialized() and dist.get_backend(group) == "nccl":
                torch.cuda.synchronize()  # NCCL returns at launch; time the transfer itself
            for rec in _recorders:
                rec.add(what, time.perf_counter() - t0, nbytes)
    except DistributedError:
        raise
    except (RuntimeError, ValueError) as e:  # DistBackendError is a RuntimeError
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        where = f"rank {rank()} of {world_size()}" if is_initialized() else "this process"
        raise DistributedError(
            f"{what} failed on {where}: {first}. A peer rank probably died, hung or was started "
            f"with a different set-up; collectives time out after {timeout_s():g}s "
            "(set MIXKIT_DIST_TIMEOUT to change it)"
        ) from None


def all_gather_object(obj: object, group: ProcessGroup | None = None) -> list[Any]:
    out: list[Any] = [None] * world_size(group)
    with collective("all_gather_object", group):
        dist.all_gather_object(out, obj, group=group)
    return out


def check_same(name: str, value: dict, group: ProcessGroup | None = None) -> None:
    """Raise a ConfigError naming the fields that differ between ranks (a mismatched launch)."""
    values = all_gather_object(value, group)
    diffs = []
    for r, other in enumerate(values):
        for key in sorted(set(value) | set(other)):
            if value.get(key) != other.get(key):
                diffs.append(
                    f"{key}: rank {rank(group)} has {value.get(key)!r}, rank {r} has {other.get(key)!r}"
                )
    if diffs:
        raise ConfigError(
            f"{name} differs across ranks ({'; '.join(diffs[:4])}); start every rank with the same "
            "configuration"
        )


def all_reduce_(
    tensor: torch.Tensor, group: ProcessGroup | None = None, op: dist.ReduceOp | None = None
) -> torch.Tensor:
    """In-place sum (or `op`) over the group, without autograd."""
    with collective("all_reduce", group, nbytes=tensor.numel() * tensor.element_size()):
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM, group=group)
    return tensor


def _all_to_all_raw(
    x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: ProcessGroup | None
) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
    with collective("all_to_all", group, nbytes=x.numel() * x.element_size()):
        dist.all_to_all_single(out, x, out_splits, in_splits, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        out_splits: list[int],
        in_splits: list[int],
        group: ProcessGroup | None,
    ) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        return _all_to_all_raw(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        out_splits, in_splits = ctx.splits
        return _all_to_all_raw(g, in_splits, out_splits, ctx.group), None, None, None


def all_to_all(
    x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: ProcessGroup | None = None
) -> torch.Tensor:
    """Rows x[sum(in_splits[:j]) : ...] go to rank j; returns the rows received, rank by rank.

    Differentiable: the backward sends each row's gradient back to where the row came from.
    """
    return cast(torch.Tensor, _AllToAll.apply(x, list(out_splits), list(in_splits), group))


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        return all_reduce_(x.clone(), group)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        # Every rank holds the same reduced value and usually the same loss of it, so each rank's
        # input receives the sum of all ranks' upstream gradients.
        return all_reduce_(g.clone(), ctx.group), None


def all_reduce_sum(x: torch.Tensor, group: ProcessGroup | None = None) -> torch.Tensor:
    """Differentiable sum over the group (backward: the sum of every rank's gradient)."""
    return cast(torch.Tensor, _AllReduceSum.apply(x, group))
