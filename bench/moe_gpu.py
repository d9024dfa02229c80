"""MoE layer on a GPU: bf16 training and inference against the dense ideal and HF, side by side.

The GPU half of the layer benchmark (bench/moe_layer.py is the CPU half and defines the layers
compared here). One short run, sized for a borrowed GPU's few minutes:

    python bench/moe_gpu.py                     # CUDA, bf16, the grid below
    python bench/moe_gpu.py --device cpu --quick  # a smoke test of the script itself (no GPU)

Grid: T=16384 tokens, d_model=2048, d_hidden=--d-hidden (default 1024), E in {8, 64, 128},
k in {2, 8}, dropless, bfloat16. Each point times, in one process and interleaved:
- ideal: a dense SwiGLU of width k*d_hidden (the same multiply-adds, no routing);
- mixkit: `MoE(expert="swiglu", router="topk")`, whose experts run `torch._grouped_mm` on CUDA bf16
  (expert_impl "auto");
- HF: transformers' Mixtral block with `experts_implementation="grouped_mm"`.
Times are CUDA-event medians of --repeats steps after --warmup. Before timing, a correctness line
compares mixkit's grouped_mm path with its per-expert loop on the same device.

Then whole HF models (random weights from a config, 2 layers, bf16): Qwen3-MoE-shaped (E=64,
k=8) and Mixtral-shaped (E=8, k=2), with experts_implementation eager, batched_mm, grouped_mm and
"mixkit" (registered by `import mixkit.moe.hf`), switched on one model so every variant runs the
same weights: forward+backward of the LM loss (with the router aux loss), and greedy decoding of
--new tokens at batch 1. Each variant's logits are checked against eager's first. The model and
the check come from bench/hf_experts.py (its CPU twin).

Expert parallelism over NCCL needs two GPUs and is not part of this script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from hf_experts import IMPLS, build, check
from moe_layer import DenseFFN, fwd_bwd, fwd_only, hf_mixtral_block, swiglu_layer

GRID = [(16384, 2048, E, k) for E in (8, 64, 128) for k in (2, 8)]
QUICK_GRID = [(256, 64, E, k) for E in (8, 16) for k in (2,)]
# HF models: (arch, d_model, E, k, each expert's d_hidden, tokens per step as batch x seq)
HF_SHAPES = [("qwen3_moe", 1024, 64, 8, 512, (4, 2048)), ("mixtral", 1024, 8, 2, 3584, (4, 2048))]
# bf16 logits of two summation orders differ by up to ~0.07 at |logits| <= 1 (measured on the CPU,
# tiny Mixtral, batched_mm against eager); a wrong expert or weight is off by O(1)
BF16_TOL = 0.15
HF_QUICK = [("qwen3_moe", 128, 8, 2, 64, (2, 64)), ("mixtral", 128, 4, 2, 128, (2, 64))]


def timer(device: torch.device):
    """(start, stop) -> seconds; CUDA events on a GPU, the wall clock elsewhere."""
    if device.type == "cuda":

        def run(step) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return run

    def run_cpu(step) -> float:
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    return run_cpu


def variants(D: int, H: int, E: int, k: int, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    built = {
        "ideal": DenseFFN(D, k * H, swiglu=True),
        "mixkit": swiglu_layer(D, H, E, k),
        "hf": hf_mixtral_block(D, H, E, k),
    }
    return {name: m.to(device=device, dtype=dtype) for name, m in built.items()}


def time_point(mods: dict, x: torch.Tensor, step, args, run) -> dict:
    for _ in range(args.warmup):
        for m in mods.values():
            step(m, x)
    times: dict[str, list[float]] = {name: [] for name in mods}
    for _ in range(args.repeats):
        for name, m in mods.items():
            times[name].append(run(lambda m=m: step(m, x)))
    return {name: statistics.median(ts) for name, ts in times.items()}


def check_paths(device: torch.device, dtype: torch.dtype) -> str:
    """mixkit's default expert path on this device against its per-expert loop, fwd and grad."""
    torch.manual_seed(1)
    layer = swiglu_layer(128, 256, 8, 2).to(device=device, dtype=dtype)
    x = torch.randn(512, 128, device=device, dtype=dtype)
    out = {}
    for impl in ("auto", "loop"):
        layer.expert_impl = impl
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        (y.float() ** 2).mean().backward()
        out[impl] = (y.float(), layer.experts.w_in.grad.float())
    dy = (out["auto"][0] - out["loop"][0]).abs().max().item()
    dg = (out["auto"][1] - out["loop"][1]).abs().max().item()
    scale = out["loop"][0].abs().max().item()
    return f"expert paths, auto vs loop on {device} {dtype}: max |dy| {dy:.3g} (|y| {scale:.3g}), max |dW_in| {dg:.3g}"


def section(title: str, grid, args, device, dtype, step) -> None:
    run = timer(device)
    print(f"\n## {title}\n")
    print("| T | d_model | E | k | ideal ms | mixkit ×ideal | HF grouped_mm ×ideal | mixkit / HF |")
    print("|---:" * 8 + "|")
    for T, D, E, k in grid:
        mods = variants(D, args.d_hidden or D // 2, E, k, device, dtype)
        grad = step is fwd_bwd
        x = torch.randn(1, T, D, device=device, dtype=dtype, requires_grad=grad)
        t = time_point(mods, x, step, args, run)
        print(
            f"| {T} | {D} | {E} | {k} | {t['ideal'] * 1e3:.2f} | **{t['mixkit'] / t['ideal']:.2f}** "
            f"| {t['hf'] / t['ideal']:.2f} | {t['mixkit'] / t['hf']:.2f} |",
            flush=True,
        )
        del mods, x
        if device.type == "cuda":
            torch.cuda.empty_cache()


def hf_point(model, ids: torch.Tensor, args, run) -> dict[str, dict[str, float]]:
    """Median fwd+bwd seconds and decode tokens/s of each experts implementation, one phase at
    a time, the implementations interleaved within it."""
    prompt, new = ids[:1, :8], args.new
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)

    def train() -> None:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    phases = {
        "train": (model.train, train),
        "decode": (model.eval, lambda: model.generate(prompt, **kw)),
    }
    out: dict[str, dict[str, float]] = {impl: {} for impl in IMPLS}
    for phase, (mode, fn) in phases.items():
        mode()
        times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for rep in range(1 + args.hf_repeats):  # the first round warms up and is not kept
            for impl in IMPLS:
                model.set_experts_implementation(impl)
                t = run(fn)
                if rep:
                    times[impl].append(t)
        model.zero_grad(set_to_none=True)
        for impl, ts in times.items():
            med = statistics.median(ts)
            out[impl][phase] = med if phase == "train" else new / med
    return out


def hf_section(args, device: torch.device) -> None:
    run = timer(device)
    print(
        f"\n## HF models, bf16: experts_implementation side by side ({args.new} decoded tokens)\n"
    )
    print(
        "| model | d_model | E | k | H | tokens | impl | fwd+bwd ms | x fastest HF "
        "| decode tok/s | x fastest HF |"
    )
    print("|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for arch, d, E, k, H, (B, S) in HF_QUICK if args.quick else HF_SHAPES:
        ns = argparse.Namespace(arch=arch, d_model=d, experts=E, k=k, hidden=H, layers=2)
        ns.vocab, ns.dtype = (512 if args.quick else 8192), torch.bfloat16
        try:
            model = build(ns).to(device)
            ids = torch.randint(0, ns.vocab, (B, S), device=device)
            check(model, ids, IMPLS, BF16_TOL)
            res = hf_point(model, ids, args, run)
        except Exception as e:  # one shape failing on a new device must not cost the others
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"| {arch} | {d} | {E} | {k} | {H} | {B}x{S} | failed: {why} |", flush=True)
            continue
        hf = [r for impl, r in res.items() if impl != "mixkit"]
        best_t, best_d = min(r["train"] for r in hf), max(r["decode"] for r in hf)
        for impl, r in res.items():
            print(
                f"| {arch} | {d} | {E} | {k} | {H} | {B}x{S} | {impl} | {r['train'] * 1e3:.2f} "
                f"| {r['train'] / best_t:.2f} | {r['decode']:.1f} | {r['decode'] / best_d:.2f} |",
                flush=True,
            )
        del model, ids
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="a tiny grid (a smoke test)")
    p.add_argument("--d-hidden", type=int, default=None, help="default: d_model / 2")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--hf-repeats", type=int, default=3, help="timed rounds of the HF models")
    p.add_argument("--new", type=int, default=32, help="tokens decoded by the HF models")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run this on a GPU machine, or --device cpu --quick")
    dtype = torch.bfloat16
    grid = QUICK_GRID if args.quick else GRID
    if args.quick:
        args.hf_repeats, args.new = 1, 4
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, bf16, dropless, SwiGLU experts, k as in the grid")
    print(check_paths(device, dtype))
    t0 = time.perf_counter()
    section("train: forward+backward, bf16", grid, args, device, dtype, fwd_bwd)
    section("infer: forward only under inference_mode, bf16", grid, args, device, dtype, fwd_only)
    hf_section(args, device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    print(f"\nexpert parallelism over NCCL: not run ({gpus} GPU(s) here; this script times one)")
    print(f"\n(wall {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
