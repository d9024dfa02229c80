"""Where an MoE layer's training step spends its time, as E grows: a torch.profiler breakdown.

For each E the layer runs forward+backward under torch.profiler. The forward is split into the
layer's phases (router, dispatch, experts, combine, losses+stats), each a record_function range;
the backward into its autograd nodes (GroupedSwiGLUFFNBackward is the experts, SmoothLoadBackward
the noisy router's load estimator, MmBackward0 the gate matmuls, ...). The dense FFN of the
active width (the ideal of bench/moe_layer.py) is timed in the same process for scale.

    python bench/moe_profile.py                                   # noisy_topk, ReLU, T=2048 d=256
    python bench/moe_profile.py --router topk --expert swiglu --E 8 256
    python bench/moe_profile.py --threads 1 --T 4096 --d 512

Times are milliseconds per step: "step" and "ideal" are the process's CPU time, best of
--repeats; the phase, node and op columns are the profiler's CPU totals averaged over --steps
(wall time of each range, so a busy machine inflates them). Compare rows within one run.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from mixkit.moe import MoE

PHASES = {
    "router": ("router", "forward"),
    "dispatch": ("dispatcher", "dispatch"),
    "experts": ("experts", "forward"),
    "combine": ("dispatcher", "combine"),
    "losses+stats": (None, "_finish"),
}


def _wrap_phases(layer: MoE) -> None:
    """Put each forward phase in a record_function range named phase:<name>."""
    for phase, (child, method) in PHASES.items():
        owner = layer if child is None else getattr(layer, child)
        inner = getattr(owner, method)

        def timed(*args, _inner=inner, _name=f"phase:{phase}", **kwargs):
            with record_function(_name):
                return _inner(*args, **kwargs)

        setattr(owner, method, timed)


def _step(module, x) -> None:
    module.zero_grad(set_to_none=True)
    y = module(x)
    loss = (y * y).mean() + getattr(module, "aux_loss", 0.0)
    with record_function("phase:backward"):
        loss.backward()


def _best_ms(module, x, repeats: int) -> float:
    _step(module, x)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()  # CPU time: a shared machine's other processes do not count
        _step(module, x)
        best = min(best, time.process_time() - t0)
    return best * 1e3


def profile_layer(T: int, D: int, E: int, args) -> dict:
    torch.manual_seed(0)
    kw = dict(k=args.k, router=args.router, expert=args.expert)
    layer = MoE(D, 2 * D, E, **kw)
    if (
        args.router == "noisy_topk"
    ):  # the paper's zero init makes every logit tie; use a trained-like gate
        with torch.no_grad():
            layer.router.w_gate.normal_(0, D**-0.5)
            layer.router.w_noise.normal_(0, D**-0.5)
    dense = MoE(D, args.k * 2 * D, 1, k=1, router="topk", expert=args.expert, w_switch=0.0)
    x = torch.randn(T, D, requires_grad=True)
    step_ms, ideal_ms = _best_ms(layer, x, args.repeats), _best_ms(dense, x, args.repeats)
    _wrap_phases(layer)
    _step(layer, x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            _step(layer, x)
    phases, nodes, ops = defaultdict(float), defaultdict(float), defaultdict(float)
    for ev in prof.key_averages():
        ms = ev.cpu_time_total / 1e3 / args.steps
        if ev.key.startswith("phase:"):
            phases[ev.key[6:]] += ms
        elif ev.key.endswith("Backward") or ev.key.endswith("Backward0") or "Backward1" in ev.key:
            nodes[ev.key] += ms
        if ev.key.startswith("aten::"):
            ops[ev.key] += ev.self_cpu_time_total / 1e3 / args.steps
    return {
        "E": E,
        "step": step_ms,
        "ideal": ideal_ms,
        "phases": phases,
        "nodes": nodes,
        "ops": ops,
    }


def _matmul_step(xs, ws, hs, ys, gws) -> None:
    """The matmuls of one SwiGLU training step for each (x, w, h, y, gw) group, nothing else, in
    the fused path's order (each pass over every expert before the next, so a weight is read
    from memory again in backward): x@w_gate, x@w_in; h@w_out; y@w_out^T; h@w_in^T + h@w_gate^T
    (input gradient) with x^T@h twice and h^T@y (weight gradients); all with out=."""
    groups = list(zip(xs, ws, hs, ys, gws, strict=True))
    for x, (wg, wi, _), h, _, _ in groups:
        torch.mm(x, wg, out=h)
        torch.mm(x, wi, out=h)
    for _, (_, _, wo), h, y, _ in groups:
        torch.mm(h, wo, out=y)
    for _, (_, _, wo), h, y, _ in groups:
        torch.mm(y, wo.t(), out=h)
    for x, (wg, wi, _), h, y, (gg, gi, go) in groups:
        torch.mm(h, wi.t(), out=x).addmm_(h, wg.t())
        torch.mm(x.t(), h, out=gg)
        torch.mm(x.t(), h, out=gi)
        torch.mm(h.t(), y, out=go)


def matmul_floor(T: int, D: int, E: int, k: int, repeats: int) -> dict:
    """CPU time of the SwiGLU step's matmuls alone: E experts of k*T/E rows each (routing made
    uniform), against the dense ideal's same matmuls over T rows of width k*d_hidden."""
    H = 2 * D
    result = {}
    for name, groups, rows, width in (("experts", E, k * T // E, H), ("dense", 1, T, k * H)):
        torch.manual_seed(0)
        xs = [torch.randn(rows, D) for _ in range(groups)]
        hs = [torch.empty(rows, width) for _ in range(groups)]
        ys = [torch.empty(rows, D) for _ in range(groups)]
        ws = [(torch.randn(D, width), torch.randn(D, width), torch.randn(width, D)) for _ in hs]
        gws = [tuple(torch.empty_like(w) for w in group) for group in ws]
        _matmul_step(xs, ws, hs, ys, gws)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            _matmul_step(xs, ws, hs, ys, gws)
            best = min(best, time.process_time() - t0)
        result[name] = best * 1e3
    flops = 9 * 2 * k * T * D * H
    return {"E": E, "rows": k * T // E, **result, "gflops": flops / result["experts"] / 1e6}


def print_matmul_floor(args) -> None:
    print("\nthe SwiGLU step's matmuls alone (uniform routing; CPU time, best of --repeats)")
    print("| E | rows per expert | expert matmuls ms | GFLOP/s | dense matmuls ms | ×dense |")
    print("|---:|---:|---:|---:|---:|---:|")
    for E in args.E:
        r = matmul_floor(args.T, args.d, E, args.k, args.repeats)
        print(
            f"| {E} | {r['rows']} | {r['experts']:.1f} | {r['gflops']:.0f} | {r['dense']:.1f} "
            f"| **{r['experts'] / r['dense']:.2f}** |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--d", type=int, default=256, help="d_model (d_hidden = 2 d_model)")
    p.add_argument("--E", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("-k", type=int, default=2)
    p.add_argument("--router", default="noisy_topk")
    p.add_argument("--expert", default="relu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--steps", type=int, default=3, help="profiled steps (averaged)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps (best kept)")
    p.add_argument("--top", type=int, default=8, help="rows of the node and op tables")
    p.add_argument(
        "--matmuls", action="store_true", help="only the table of the step's matmuls alone"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.matmuls:
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, T={args.T}, "
            f"d_model={args.d}, d_hidden={2 * args.d}, k={args.k}, fp32"
        )
        print_matmul_floor(args)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, T={args.T}, "
        f"d_model={args.d}, d_hidden={2 * args.d}, k={args.k}, router={args.router}, "
        f"expert={args.expert}, fp32"
    )
    rows = [profile_layer(args.T, args.d, E, args) for E in args.E]
    print("\nstep and forward phases, ms per step (the phases include the profiler's overhead)")
    cols = ["step", "ideal", *PHASES, "backward"]
    print("| E | " + " | ".join(cols) + " |")
    print("|---:|" + "---:|" * len(cols))
    for r in rows:
        vals = [r["step"], r["ideal"]] + [r["phases"].get(c, 0.0) for c in [*PHASES, "backward"]]
        print(f"| {r['E']} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    for title, key in (
        ("backward autograd nodes (CPU total)", "nodes"),
        ("aten ops (self CPU)", "ops"),
    ):
        names = sorted({n for r in rows for n in r[key]}, key=lambda n: -rows[-1][key].get(n, 0.0))
        print(f"\n{title}, ms per step, sorted by the last E")
        print("| name | " + " | ".join(f"E={r['E']}" for r in rows) + " |")
        print("|---|" + "---:|" * len(rows))
        for n in names[: args.top]:
            print(f"| {n} | " + " | ".join(f"{r[key].get(n, 0.0):.1f}" for r in rows) + " |")


if __name__ == "__main__":
    main()
