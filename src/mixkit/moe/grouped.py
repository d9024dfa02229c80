"""A grouped expert FFN as one autograd Function, for the CPU (and any device without _grouped_mm).

Legend: A assignments sorted by expert, D d_model, H d_hidden, E experts.

Why not plain autograd over a loop: each per-expert matmul then gets its own weight-gradient
tensor in backward, and `unbind`'s backward stacks them into a fresh (E, D, H) tensor: E small
allocations plus a full copy of every weight gradient, every step. Here forward writes every
expert's rows into one preallocated buffer, and backward writes each expert's weight gradient
straight into its slice of one (E, D, H) buffer with `torch.mm(..., out=...)`. Activations saved for
backward are exactly what a dense FFN over the same A rows would save: the input and the hidden.

Small experts run side by side. One matmul of 32 or 128 rows does not keep several cores busy
(measured on 2 cores, 8192 x 512 @ 512 x 1024 split over E experts: 85 ms at E=256 one expert at a
time with 2 threads each, 60 ms with the experts split between two threads of 1 core each, 42 ms
for one dense matmul). So when experts are small, `_each_expert` hands contiguous blocks of
experts to a small thread pool, one intra-op thread per worker (torch's matmuls release the GIL;
its thread count is per thread, so the caller's stays as it was). Every worker writes disjoint
rows or experts.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# When experts run side by side (measured on the 2-core CPU VM, fwd+bwd of the whole layer): with
# d_model x d_hidden = 512 x 1024 weights it is faster at 32 rows per expert (593 -> 440 ms) and
# 128 (375 -> 331 ms); with 256 x 512 weights it is slower at every size tried (e.g. 44 -> 62 ms at
# 512 rows), the per-call thread hand-off costing more than the smaller matmuls gain.
SIDE_BY_SIDE_MAX_ROWS = 512  # mean rows per expert, at most
SIDE_BY_SIDE_MIN_WEIGHT = 1 << 19  # elements of one expert matrix (d_model * d_hidden), at least
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _spans(counts: list[int]):
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


def _each_expert(counts: list[int], fn, weight: torch.Tensor) -> None:
    """fn(e, start, stop) for every expert with rows; small experts side by side (see above).

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
        for e, s, t in spans:
            fn(e, s, t)
        return
    blocks, block, filled = [], [], 0  # contiguous blocks of about rows/threads rows each
    for span in spans:
        block.append(span)
        filled += span[2] - span[1]
        if filled * threads >= rows * (len(blocks) + 1) and len(blocks) < threads - 1:
            blocks.append(block)
            block = []
    blocks.append(block)

    def work(block):
        with torch.no_grad():  # out= matmuls; a worker thread starts in grad mode
            for e, s, t in block:
                fn(e, s, t)

    for future in [_thread_pool(threads).submit(work, b) for b in blocks if b]:
        future.result()


class GroupedReluFFN(torch.autograd.Function):
    """out_AD = scale_A * (relu(x_e @ w_in[e]) @ w_out[e]) for each expert's rows.

    The gate weight is applied inside so that backward gets its gradient from quantities it
    already has, d out_a / d scale_a . g_a = (g_a @ w_out[e]^T) . h_a, instead of saving the
    (A, D) unscaled output just for that."""

    @staticmethod
    def forward(ctx, x_AD, scale_A, w_in_EDH, w_out_EHD, counts):
        A, H, D = x_AD.shape[0], w_in_EDH.shape[2], w_out_EHD.shape[2]
        h_AH = x_AD.new_empty(A, H)
        out_AD = x_AD.new_empty(A, D)

        def up(e, s, t):
            torch.mm(x_AD[s:t], w_in_EDH[e], out=h_AH[s:t])

        _each_expert(counts, up, w_in_EDH)
        h_AH.relu_()

        def down(e, s, t):
            torch.mm(h_AH[s:t], w_out_EHD[e], out=out_AD[s:t])

        _each_expert(counts, down, w_out_EHD)
        out_AD.mul_(scale_A.unsqueeze(-1))
        ctx.save_for_backward(x_AD, scale_A, h_AH, w_in_EDH, w_out_EHD)
        ctx.counts = counts
        return out_AD

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out_AD):
        x_AD, scale_A, h_AH, w_in_EDH, w_out_EHD = ctx.saved_tensors
        counts = ctx.counts
        g_out_AD = g_out_AD.contiguous()
        t_AH = torch.empty_like(h_AH)  # g_out @ w_out^T, before the gate weight

        def down_t(e, s, t):
            torch.mm(g_out_AD[s:t], w_out_EHD[e].t(), out=t_AH[s:t])

        _each_expert(counts, down_t, w_out_EHD)
        g_scale_A = (t_AH * h_AH).sum(-1) if ctx.needs_input_grad[1] else None
        g_h_AH = t_AH.mul_(scale_A.unsqueeze(-1)).mul_(h_AH > 0)  # relu', in place
        g_x_AD = None
        if ctx.needs_input_grad[0]:
            g_x_AD = torch.empty_like(x_AD)

            def up_t(e, s, t):
                torch.mm(g_h_AH[s:t], w_in_EDH[e].t(), out=g_x_AD[s:t])

            _each_expert(counts, up_t, w_in_EDH)
        g_w_in = g_w_out = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            g_scaled_AD = g_out_AD * scale_A.unsqueeze(-1)
            g_w_in, g_w_out = _weight_grads(
                counts, [(x_AD, g_h_AH)], [(h_AH, g_scaled_AD)], w_in_EDH, w_out_EHD
            )
        return g_x_AD, g_scale_A, g_w_in, g_w_out, None


class GroupedSwiGLUFFN(torch.autograd.Function):
    """out_AD = scale_A * ((silu(x_e @ w_gate[e]) * (x_e @ w_in[e])) @ w_out[e]) per expert."""

    @staticmethod
    def forward(ctx, x_AD, scale_A, w_gate_EDH, w_in_EDH, w_out_EHD, counts):
        A, H, D = x_AD.shape[0], w_in_EDH.shape[2], w_out_EHD.shape[2]
        g_AH, u_AH = x_AD.new_empty(A, H), x_AD.new_empty(A, H)
        out_AD = x_AD.new_empty(A, D)

        def up(e, s, t):
            torch.mm(x_AD[s:t], w_gate_EDH[e], out=g_AH[s:t])
            torch.mm(x_AD[s:t], w_in_EDH[e], out=u_AH[s:t])

        _each_expert(counts, up, w_in_EDH)
        a_AH = F.silu(g_AH) * u_AH

        def down(e, s, t):
            torch.mm(a_AH[s:t], w_out_EHD[e], out=out_AD[s:t])

        _each_expert(counts, down, w_out_EHD)
        out_AD.mul_(scale_A.unsqueeze(-1))
        ctx.save_for_backward(x_AD, scale_A, g_AH, u_AH, w_gate_EDH, w_in_EDH, w_out_EHD)
        ctx.counts = counts
        return out_AD

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out_AD):
        x_AD, scale_A, g_AH, u_AH, w_gate, w_in, w_out = ctx.saved_tensors
        counts = ctx.counts
        g_out_AD = g_out_AD.contiguous()
        sig_AH = torch.sigmoid(g_AH)
        silu_AH = g_AH * sig_AH
        a_AH = silu_AH * u_AH  # recomputed rather than saved
        t_AH = torch.empty_like(u_AH)

        def down_t(e, s, t):
            torch.mm(g_out_AD[s:t], w_out[e].t(), out=t_AH[s:t])

        _each_expert(counts, down_t, w_out)
        g_scale_A = (t_AH * a_AH).sum(-1) if ctx.needs_input_grad[1] else None
        g_a_AH = t_AH.mul_(scale_A.unsqueeze(-1))
        g_u_AH = g_a_AH * silu_AH
        g_g_AH = g_a_AH * u_AH * sig_AH * (1 + g_AH * (1 - sig_AH))  # d silu(z)/dz
        g_x_AD = None
        if ctx.needs_input_grad[0]:
            g_x_AD = torch.empty_like(x_AD)

            def up_t(e, s, t):
                torch.mm(g_u_AH[s:t], w_in[e].t(), out=g_x_AD[s:t])
                g_x_AD[s:t].addmm_(g_g_AH[s:t], w_gate[e].t())

            _each_expert(counts, up_t, w_in)
        g_scaled_AD = g_out_AD * scale_A.unsqueeze(-1)
        g_w_gate, g_w_in, g_w_out = _weight_grads(
            counts, [(x_AD, g_g_AH), (x_AD, g_u_AH)], [(a_AH, g_scaled_AD)], w_gate, w_in, w_out
        )
        return g_x_AD, g_scale_A, g_w_gate, g_w_in, g_w_out, None


def _weight_grads(counts, in_pairs, out_pairs, *weights):
    """Per-expert weight gradients written into one stacked buffer per weight.

    in_pairs: (input_AD, grad_AH) for each (E, D, H) weight, out_pairs: (input_AH, grad_AD) for
    the (E, H, D) one; `weights` are in the same order (in_pairs' weights first)."""
    grads = [torch.empty_like(w) for w in weights]
    pairs = list(in_pairs) + list(out_pairs)
    seen = [False] * len(counts)

    def grads_of(e, s, t):
        seen[e] = True
        for (inp, grad), buf in zip(pairs, grads, strict=True):
            torch.mm(inp[s:t].t(), grad[s:t], out=buf[e])

    _each_expert(counts, grads_of, weights[0])
    for e, hit in enumerate(seen):
        if not hit:  # an expert with no tokens gets an exact zero gradient
            for buf in grads:
                buf[e].zero_()
    return grads
