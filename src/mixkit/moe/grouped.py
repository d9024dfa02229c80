"""A grouped expert FFN as one autograd Function, for the CPU (and any device without _grouped_mm).

Legend: A assignments sorted by expert, D d_model, H d_hidden, E experts.

Why not plain autograd over a loop: each per-expert matmul then gets its own weight-gradient
tensor in backward, and `unbind`'s backward stacks them into a fresh (E, D, H) tensor: E small
allocations plus a full copy of every weight gradient, every step. Here forward writes every
expert's rows into one preallocated buffer, and backward writes each expert's weight gradient
straight into its slice of one (E, D, H) buffer with `torch.mm(..., out=...)`; that buffer comes
from buffers.GradientPool, which hands back last step's gradient memory once the optimizer has
dropped it (no page faults on E/k times a dense FFN's gradient bytes). Activations saved for
backward are exactly what a dense FFN over the same A rows would save: the input and the hidden.

Small experts run side by side. One matmul of 32 or 128 rows does not keep several cores busy
(git log e1a7dc6 and cb4465e have the measurements). So when experts are small, `_each_expert`
hands contiguous blocks of
experts to a small thread pool, one intra-op thread per worker (torch's matmuls release the GIL;
its thread count is per thread, so the caller's stays as it was). Every worker writes disjoint
rows or experts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from mixkit.moe.buffers import gradients, scratch

# Experts run side by side only where it measured faster on the 2-core VM (commit e1a7dc6): with
# 512 x 1024 expert weights up to 512 rows per expert; with 256 x 512 weights the per-call
# thread hand-off cost more than the smaller matmuls gained.
SIDE_BY_SIDE_MAX_ROWS = 512  # mean rows per expert, at most
SIDE_BY_SIDE_MIN_WEIGHT = 1 << 19  # elements of one expert matrix (d_model * d_hidden), at least
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _spans(counts: list[int]) -> Iterator[tuple[int, int, int]]:
    start = 0
    for e, n in enumerate(counts):
        if n:
            yield e, start, start + n
        start += n


def _forget_pool_after_fork() -> None:
    global _pool, _pool_workers
    _pool, _pool_workers = (
        None,
        0,
    )  # a forked child has none of the parent's threads; it starts its own pool


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """Workers with one intra-op thread each (torch's thread count is per thread)."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers != workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(
                workers,
                thread_name_prefix="mixkit-experts",
                initializer=torch.set_num_threads,
                initargs=(1,),
            )
            _pool_workers = workers
        return _pool


def _each_expert(counts: list[int], fn: Callable[[int], Any], weight: torch.Tensor) -> None:
    """fn(e) for every expert with rows; small experts side by side (see above).

    `weight` is one of the stacked (E, ., .) matrices the calls multiply by."""
    spans = list(_spans(counts))
    threads = torch.get_num_threads()
    rows = spans[-1][2] - spans[0][1] if spans else 0
    if (
        threads < 2
        or weight[0].numel() < SIDE_BY_SIDE_MIN_WEIGHT
        or len(spans) < 2 * threads
        or rows > SIDE_BY_SIDE_MAX_ROWS * len(spans)
        or threading.current_thread().name.startswith("mixkit-experts")
    ):
        for e, _, _ in spans:
            fn(e)
        return
    # contiguous blocks of about rows/threads rows each
    blocks: list[list[tuple[int, int, int]]] = []
    block: list[tuple[int, int, int]] = []
    filled = 0
    for span in spans:
        block.append(span)
        filled += span[2] - span[1]
        if filled * threads >= rows * (len(blocks) + 1) and len(blocks) < threads - 1:
            blocks.append(block)
            block = []
    blocks.append(block)

    # out= matmuls; a worker thread starts in grad mode, and writing into tensors made under
    # inference_mode is allowed only inside inference_mode
    mode = torch.inference_mode if torch.is_inference_mode_enabled() else torch.no_grad

    def work(block: list[tuple[int, int, int]]) -> None:
        with mode():
            for e, _, _ in block:
                fn(e)

    for future in [_thread_pool(threads).submit(work, b) for b in blocks if b]:
        future.result()


def _save_input(
    ctx: Any,
    x_AD: torch.Tensor,
    source: tuple[torch.Tensor, torch.Tensor] | None,
    *others: torch.Tensor,
) -> None:
    """Save for backward what it needs to get x_AD back, and `others`. `source` = (x_TD,
    token_A) when x_AD is x_TD's rows gathered by token: then the (A, D) copy, k times the
    input's size, is not kept; x_TD is (the router keeps it anyway) and backward gathers again."""
    ctx.regather = source is not None
    ctx.save_for_backward(*(source if source is not None else (x_AD,)), *others)


def _saved(ctx: Any) -> tuple[torch.Tensor, ...]:
    if not ctx.regather:
        return ctx.saved_tensors
    x_TD, token_A, *others = ctx.saved_tensors
    x_AD = scratch.take(token_A.shape[0], x_TD.shape[1], like=x_TD)
    return (torch.index_select(x_TD, 0, token_A, out=x_AD), *others)


def _scaled(x_AD: torch.Tensor, scale_A: torch.Tensor) -> torch.Tensor:
    """x_AD * scale_A per row, into a pooled buffer (see buffers.ScratchPool)."""
    return torch.mul(x_AD, scale_A.unsqueeze(-1), out=scratch.take(*x_AD.shape, like=x_AD))


def _few(counts: list[int]) -> list[int] | None:
    """The experts with rows when they are under half of all (decoding: a few of E): views are
    then made for those only, as one view per expert per tensor for all E costs more there."""
    active = [e for e, n in enumerate(counts) if n]
    return active if 2 * len(active) < len(counts) else None


def _rows(
    counts: list[int], *tensors: torch.Tensor, t: bool = False
) -> list[Sequence[torch.Tensor]]:
    """Each (A, .) tensor's rows per expert ((., n_e) views when t), made in one split per
    tensor: indexing every tensor per expert in Python costs more than the small matmuls at
    E=256. Experts without rows get empty views."""
    dim = 1 if t else 0
    tensors = tuple(x.t() if t else x for x in tensors)
    active = _few(counts)
    if active is None:
        return [x.split(counts, dim=dim) for x in tensors]
    starts = [0]
    for n in counts:
        starts.append(starts[-1] + n)
    out: list[Sequence[torch.Tensor]] = []
    for x in tensors:
        views = [x.narrow(dim, 0, 0)] * len(counts)
        for e in active:
            views[e] = x.narrow(dim, starts[e], counts[e])
        out.append(views)
    return out


def _each(
    counts: list[int], *weights: torch.Tensor, t: bool = False
) -> list[Sequence[torch.Tensor]]:
    """Each stacked (E, ., .) weight's per-expert matrices (transposed when t): one unbind per
    weight, or only the experts with rows when they are few (see _few)."""
    weights = tuple(w.transpose(1, 2) if t else w for w in weights)
    active = _few(counts)
    if active is None:
        return [w.unbind(0) for w in weights]
    out: list[Sequence[torch.Tensor]] = []
    for w in weights:
        views = [w[0]] * len(counts)
        for e in active:
            views[e] = w[e]
        out.append(views)
    return out


class GroupedReluFFN(torch.autograd.Function):
    """out_AD = scale_A * (relu(x_e @ w_in[e]) @ w_out[e]) for each expert's rows.

    The gate weight is applied inside so that backward gets its gradient from quantities it
    already has, d out_a / d scale_a . g_a = (g_a @ w_out[e]^T) . h_a, instead of saving the
    (A, D) unscaled output just for that."""

    @staticmethod
    def forward(
        ctx: Any,
        x_AD: torch.Tensor,
        scale_A: torch.Tensor,
        w_in_EDH: torch.Tensor,
        w_out_EHD: torch.Tensor,
        counts: list[int],
        source: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        A, H, D = x_AD.shape[0], w_in_EDH.shape[2], w_out_EHD.shape[2]
        h_AH, out_AD = scratch.take(A, H, like=x_AD), scratch.take(A, D, like=x_AD)
        xs, hs, outs = _rows(counts, x_AD, h_AH, out_AD)
        w_in, w_out = _each(counts, w_in_EDH, w_out_EHD)
        _each_expert(counts, lambda e: torch.mm(xs[e], w_in[e], out=hs[e]), w_in_EDH)
        h_AH.relu_()
        _each_expert(counts, lambda e: torch.mm(hs[e], w_out[e], out=outs[e]), w_out_EHD)
        out_AD.mul_(scale_A.unsqueeze(-1))
        _save_input(ctx, x_AD, source, scale_A, h_AH, w_in_EDH, w_out_EHD)
        ctx.counts = counts
        return out_AD

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_out_AD: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_AD, scale_A, h_AH, w_in, w_out = _saved(ctx)
        counts, needs = ctx.counts, ctx.needs_input_grad
        g_out_AD = g_out_AD.contiguous()
        t_AH = scratch.take(*h_AH.shape, like=h_AH)  # g_out @ w_out^T, before the gate weight
        w_in_t, w_out_t = _each(counts, w_in, w_out, t=True)
        g_outs, ts = _rows(counts, g_out_AD, t_AH)
        _each_expert(counts, lambda e: torch.mm(g_outs[e], w_out_t[e], out=ts[e]), w_out)
        g_scale_A = torch.linalg.vecdot(t_AH, h_AH) if needs[1] else None
        # relu' in one pass (fused elementwise kernels: each (A, H) pass costs a dense FFN's)
        g_h_AH = t_AH.mul_(scale_A.unsqueeze(-1))
        torch.ops.aten.threshold_backward.grad_input(g_h_AH, h_AH, 0, grad_input=g_h_AH)
        g_scaled_AD = _scaled(g_out_AD, scale_A)
        g_x_AD = scratch.take(*x_AD.shape, like=x_AD) if needs[0] else None
        weight_grads = _WeightGrads((w_in, w_out), needs[2] or needs[3])
        g_hs, g_scaleds = _rows(counts, g_h_AH, g_scaled_AD)
        g_xs = _rows(counts, g_x_AD)[0] if g_x_AD is not None else None
        xs_t, hs_t = _rows(counts, x_AD, h_AH, t=True)

        # one expert's input and weight gradients while its rows are in cache
        def up_t(e: int) -> None:
            if g_xs is not None:
                torch.mm(g_hs[e], w_in_t[e], out=g_xs[e])
            weight_grads.write(e, (xs_t[e], g_hs[e]), (hs_t[e], g_scaleds[e]))

        _each_expert(counts, up_t, w_in)
        g_w_in, g_w_out = weight_grads.finish(counts)
        return g_x_AD, g_scale_A, g_w_in, g_w_out, None, None


class GroupedSwiGLUFFN(torch.autograd.Function):
    """out_AD = scale_A * ((silu(x_e @ w_gate[e]) * (x_e @ w_in[e])) @ w_out[e]) per expert."""

    @staticmethod
    def forward(
        ctx: Any,
        x_AD: torch.Tensor,
        scale_A: torch.Tensor,
        w_gate_EDH: torch.Tensor,
        w_in_EDH: torch.Tensor,
        w_out_EHD: torch.Tensor,
        counts: list[int],
        source: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        A, H, D = x_AD.shape[0], w_in_EDH.shape[2], w_out_EHD.shape[2]
        g_AH, u_AH = scratch.take(A, H, like=x_AD), scratch.take(A, H, like=x_AD)
        a_AH, out_AD = scratch.take(A, H, like=x_AD), scratch.take(A, D, like=x_AD)
        xs, gs, us, as_, outs = _rows(counts, x_AD, g_AH, u_AH, a_AH, out_AD)
        w_gate, w_in, w_out = _each(counts, w_gate_EDH, w_in_EDH, w_out_EHD)

        def up(e: int) -> None:
            torch.mm(xs[e], w_gate[e], out=gs[e])
            torch.mm(xs[e], w_in[e], out=us[e])

        _each_expert(counts, up, w_in_EDH)
        torch.mul(torch.ops.aten.silu.out(g_AH, out=a_AH), u_AH, out=a_AH)
        _each_expert(counts, lambda e: torch.mm(as_[e], w_out[e], out=outs[e]), w_out_EHD)
        out_AD.mul_(scale_A.unsqueeze(-1))
        # a is kept (not recomputed): two fewer (A, H) passes in backward for one more buffer
        _save_input(ctx, x_AD, source, scale_A, g_AH, u_AH, a_AH, w_gate_EDH, w_in_EDH, w_out_EHD)
        ctx.counts = counts
        return out_AD

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_out_AD: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_AD, scale_A, g_AH, u_AH, a_AH, w_gate, w_in, w_out = _saved(ctx)
        counts, needs = ctx.counts, ctx.needs_input_grad
        g_out_AD = g_out_AD.contiguous()
        t_AH = scratch.take(*u_AH.shape, like=u_AH)
        w_gate_t, w_in_t, w_out_t = _each(counts, w_gate, w_in, w_out, t=True)
        g_outs, ts = _rows(counts, g_out_AD, t_AH)
        _each_expert(counts, lambda e: torch.mm(g_outs[e], w_out_t[e], out=ts[e]), w_out)
        # six (A, H) passes, each a fused kernel; autograd's silu_backward is d silu(z)/dz * grad
        g_scale_A = torch.linalg.vecdot(t_AH, a_AH) if needs[1] else None
        g_a_AH = t_AH.mul_(scale_A.unsqueeze(-1))
        g_u_AH = torch.ops.aten.silu.out(g_AH, out=scratch.take(*g_AH.shape, like=g_AH)).mul_(
            g_a_AH
        )
        g_g_AH = g_a_AH.mul_(u_AH)  # g_a is not needed after this, so t's memory is reused
        torch.ops.aten.silu_backward.grad_input(g_g_AH, g_AH, grad_input=g_g_AH)
        g_scaled_AD = _scaled(g_out_AD, scale_A)
        g_x_AD = scratch.take(*x_AD.shape, like=x_AD) if needs[0] else None
        weight_grads = _WeightGrads((w_gate, w_in, w_out), any(needs[2:5]))
        g_gs, g_us, g_scaleds = _rows(counts, g_g_AH, g_u_AH, g_scaled_AD)
        g_xs = _rows(counts, g_x_AD)[0] if g_x_AD is not None else None
        xs_t, as_t = _rows(counts, x_AD, a_AH, t=True)

        # one expert's input and weight gradients while its rows are in cache
        def up_t(e: int) -> None:
            if g_xs is not None:
                torch.mm(g_us[e], w_in_t[e], out=g_xs[e])
                g_xs[e].addmm_(g_gs[e], w_gate_t[e])
            weight_grads.write(e, (xs_t[e], g_gs[e]), (xs_t[e], g_us[e]), (as_t[e], g_scaleds[e]))

        _each_expert(counts, up_t, w_in)
        g_w_gate, g_w_in, g_w_out = weight_grads.finish(counts)
        return g_x_AD, g_scale_A, g_w_gate, g_w_in, g_w_out, None, None


class _WeightGrads:
    """Per-expert weight gradients written into one stacked buffer per weight, so an optimizer
    step sees a few (E, ., .) tensors and backward allocates each once (from buffers.gradients).
    write(e, *(input^T, grad)) takes one pair per weight, in the weights' order:
    grad_w[e] = input^T @ grad."""

    def __init__(self, weights: tuple[torch.Tensor, ...], needed: bool) -> None:
        self.count = len(weights)
        self.grads = [gradients.take(w) for w in weights] if needed else None
        self.each = [g.unbind(0) for g in self.grads] if self.grads is not None else []

    def write(self, e: int, *pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
        for (inp_t, grad), buf in zip(pairs, self.each, strict=False):
            torch.mm(inp_t, grad, out=buf[e])

    def finish(self, counts: list[int]) -> Sequence[torch.Tensor | None]:
        if self.grads is None:
            return [None] * self.count
        for e, n in enumerate(counts):
            if not n:  # an expert with no tokens gets an exact zero gradient
                for buf in self.each:
                    buf[e].zero_()
        return self.grads
