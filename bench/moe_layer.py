"""MoE layer benchmark: forward+backward time as a ratio to an ideal, measured side by side.

The ideal is a dense FFN of width k*d_hidden on the same tokens: the same multiply-adds as k experts
per token, with no routing, no permutation and one big matmul. A ratio of 1.0 means routing and
dispatch are free; "cost follows k, not E" means the ratio stays flat as E grows.

Every variant of a row runs in one process, interleaved round-robin, and the best of N repeats is
kept, so a noisy neighbour slows all variants alike rather than one of them.

    python bench/moe_layer.py                  # the full grid (make bench)
    python bench/moe_layer.py --quick          # a small grid, a few seconds
    python bench/moe_layer.py --no-peers       # skip HF transformers' Mixtral block

Memory columns:
- act: bytes saved for backward (activations; parameters excluded), as a ratio to the ideal's.
  This is what must not grow with E.
- peak MB: the process's peak RSS increase during one forward+backward, parameter gradients
  already allocated (so the transient weight-gradient buffer, which is sized by the parameters
  and not by the tokens, is included).
- fresh-grad ms: the time to allocate and first-touch buffers the size of the parameters. Every
  backward after optimizer.zero_grad() (set_to_none) pays it; an MoE has E/k times the ideal's
  parameters, so this part of its cost follows E by construction, whatever the routing does.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

# Transparent huge pages for large CPU tensors; read once by torch at start-up, so set it before the
# import. It applies to every variant alike (weight gradients are E/k times the ideal's, and without
# it page faults on fresh gradient buffers dominate at E=256). --no-thp turns it off.
if "--no-thp" not in sys.argv:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mixkit.moe import MoE  # noqa: E402

FULL_GRID = [(T, D, E) for T in (2048, 4096) for D in (256, 512) for E in (8, 64, 256)]
QUICK_GRID = [(512, 128, E) for E in (8, 64)]


class DenseFFN(nn.Module):
    """The ideal: one FFN of width k*d_hidden (relu) or a SwiGLU of the same width."""

    def __init__(self, d_model: int, width: int, swiglu: bool = False):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(d_model, width) * d_model**-0.5)
        self.w_gate = nn.Parameter(torch.randn(d_model, width) * d_model**-0.5) if swiglu else None
        self.w_out = nn.Parameter(torch.randn(width, d_model) * width**-0.5)

    def forward(self, x):
        h = x @ self.w_in
        h = F.silu(x @ self.w_gate) * h if self.w_gate is not None else F.relu(h)
        return h @ self.w_out


def hf_mixtral_block(d_model: int, d_hidden: int, E: int, k: int, impl: str):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(
        hidden_size=d_model, intermediate_size=d_hidden, num_local_experts=E, num_experts_per_tok=k
    )
    cfg._experts_implementation = impl
    block = MixtralSparseMoeBlock(cfg)
    for p in block.parameters():
        nn.init.normal_(p, std=d_model**-0.5)
    return block


def fwd_bwd(module: nn.Module, x: torch.Tensor, set_to_none: bool = True) -> None:
    module.zero_grad(set_to_none=set_to_none)
    x.grad = None
    y = module(x)
    aux = getattr(module, "aux_loss", None)
    loss = (y * y).mean() + (aux if aux is not None else 0.0)
    loss.backward()


def activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct storages autograd saves for backward, parameters and the input excluded."""
    skip = {p.untyped_storage().data_ptr() for p in module.parameters()}
    skip.add(x.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in skip:
                seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fwd_bwd(module, x)
    return sum(seen.values())


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def peak_rss_mb(module: nn.Module, x: torch.Tensor) -> float | None:
    """Peak RSS increase of one forward+backward (Linux only), gradients already allocated."""
    try:
        fwd_bwd(module, x, set_to_none=False)  # allocates .grad once
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark
        before = _status_kb("VmRSS")
        fwd_bwd(module, x, set_to_none=False)
        return (_status_kb("VmHWM") - before) / 1024
    except OSError:
        return None


def fresh_grad_ms(module: nn.Module, repeats: int) -> float:
    """Time to allocate and first-touch buffers the size of the module's parameters: the floor that
    any backward pays for fresh weight gradients (optimizer.zero_grad() sets them to None)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        bufs = [torch.empty_like(p).fill_(0.0) for p in module.parameters()]
        best = min(best, time.perf_counter() - t0)
        del bufs
    return best * 1e3


def time_variants(variants: dict, x: torch.Tensor, repeats: int) -> dict[str, float]:
    for module in variants.values():  # warm-up
        fwd_bwd(module, x)
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, module in variants.items():
            t0 = time.perf_counter()
            fwd_bwd(module, x)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def run_row(T, D, E, k, args) -> dict:
    torch.manual_seed(0)
    H = 2 * D
    x = torch.randn(1, T, D, requires_grad=True)  # (batch, seq, d): the shape HF expects
    variants = {
        "ideal": DenseFFN(D, k * H),
        "mixkit": MoE(D, H, E, k=k, router=args.router),
    }
    if args.peers:
        variants["ideal_swiglu"] = DenseFFN(D, k * H, swiglu=True)
        variants["mixkit_swiglu"] = MoE(D, H, E, k=k, router="topk", expert="swiglu", w_switch=0.0)
        variants["hf_eager"] = hf_mixtral_block(D, H, E, k, "eager")
        variants["hf_grouped_mm"] = hf_mixtral_block(D, H, E, k, "grouped_mm")
    for m in variants.values():
        m.train()
    times = time_variants(variants, x, args.repeats)
    fwd_bwd(variants["mixkit"], x)
    row = {"T": T, "D": D, "E": E, "times": times}
    row["dropped"] = float(variants["mixkit"].last_stats.dropped_fraction)
    row["act_ideal"] = activation_bytes(variants["ideal"], x)
    row["act_mixkit"] = activation_bytes(variants["mixkit"], x)
    row["rss_ideal"] = peak_rss_mb(variants["ideal"], x)
    row["rss_mixkit"] = peak_rss_mb(variants["mixkit"], x)
    row["grad_alloc_ms_ideal"] = fresh_grad_ms(variants["ideal"], args.repeats)
    row["grad_alloc_ms_mixkit"] = fresh_grad_ms(variants["mixkit"], args.repeats)
    return row


def fmt_table(rows: list[dict], peers: bool) -> str:
    head = (
        "| T | d_model | E | ideal ms | mixkit ms | mixkit ×ideal | dropped % | act ×ideal "
        "| peak MB ideal / mixkit | fresh-grad ms ideal / mixkit |"
    )
    sep = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if peers:
        head += " SwiGLU: mixkit ×ideal | HF eager ×ideal | HF grouped_mm ×ideal |"
        sep += "---:|---:|---:|"
    lines = [head, sep]
    for r in rows:
        t = r["times"]
        rss = (
            f"{r['rss_ideal']:.0f} / {r['rss_mixkit']:.0f}" if r["rss_ideal"] is not None else "n/a"
        )
        line = (
            f"| {r['T']} | {r['D']} | {r['E']} | {t['ideal'] * 1e3:.1f} | {t['mixkit'] * 1e3:.1f} | "
            f"**{t['mixkit'] / t['ideal']:.2f}** | {100 * r['dropped']:.1f} | "
            f"{r['act_mixkit'] / r['act_ideal']:.2f} | {rss} | "
            f"{r['grad_alloc_ms_ideal']:.0f} / {r['grad_alloc_ms_mixkit']:.0f} |"
        )
        if peers:
            s = t["ideal_swiglu"]
            line += f" {t['mixkit_swiglu'] / s:.2f} | {t['hf_eager'] / s:.2f} | {t['hf_grouped_mm'] / s:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def growth_summary(rows: list[dict]) -> str:
    out = []
    by_key = {(r["T"], r["D"], r["E"]): r for r in rows}
    for (T, D, E), r in sorted(by_key.items()):
        if E != 8:
            continue
        base = r["times"]["mixkit"] / r["times"]["ideal"]
        for E2 in (64, 256):
            if (T, D, E2) in by_key:
                r2 = by_key[(T, D, E2)]
                ratio = r2["times"]["mixkit"] / r2["times"]["ideal"]
                out.append(
                    f"T={T} d_model={D}: ×ideal grows {ratio / base:.2f}× from E=8 to E={E2}"
                )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a small grid for a smoke run")
    p.add_argument(
        "--repeats", type=int, default=3, help="timed repeats per variant (best is kept)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument("--router", default="noisy_topk", help="mixkit router for the main column")
    p.add_argument("-k", type=int, default=2)
    p.add_argument("--no-peers", dest="peers", action="store_false", help="skip HF transformers")
    p.add_argument("--no-thp", action="store_true", help="do not enable THP_MEM_ALLOC_ENABLE")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peers:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print(
                "transformers is not installed (pip install -e '.[bench]'); running without peers"
            )
            args.peers = False
    grid = QUICK_GRID if args.quick else FULL_GRID
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, k={args.k}, fp32, dropless, "
        f"router={args.router}, THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}, "
        f"best of {args.repeats}"
    )
    rows = []
    try:
        from rich.progress import track

        it = track(grid, description="benchmarking", transient=True)
    except ImportError:
        it = grid
    for T, D, E in it:
        rows.append(run_row(T, D, E, args.k, args))
    print(fmt_table(rows, args.peers))
    print(growth_summary(rows))


if __name__ == "__main__":
    main()
