"""An HF MoE model with experts_implementation="mixkit" against HF's own backends, side by side.

One model (random weights, built from a config, nothing downloaded) whose experts implementation
is switched between variants with `set_experts_implementation`, so every variant runs the same
weights on the same tokens. One phase (train, prefill, decode) at a time, its variants
interleaved round-robin, and the best of N repeats is kept, so a noisy neighbour slows all of
them alike. Times are the process's CPU time (time.process_time): with --threads 1 that is the
step's own time, which other processes on a shared machine do not inflate the way they inflate
wall time (the table gives both). Columns:
- train: one forward+backward of the LM loss (with the router aux loss), gradients freed before
  each step as `optimizer.zero_grad()` does.
- prefill: one forward over the same tokens under torch.inference_mode().
- decode: greedy generation of --new tokens after a short prompt, batch 1 (tokens/s).
Every variant's logits are checked against eager's first (fp32: within 1e-4).

    python bench/hf_experts.py                         # Qwen3-MoE, d=512, E=64, k=8, T=2048
    python bench/hf_experts.py --arch mixtral -E 8 -k 2 --hidden 1024
    python bench/hf_experts.py --quick                 # small shapes, a smoke run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import transformers
from transformers import AutoModelForCausalLM, MixtralConfig, OlmoeConfig, Qwen3MoeConfig

import mixkit.moe.hf  # noqa: F401  registers experts_implementation="mixkit"

transformers.logging.set_verbosity_error()
IMPLS = ["eager", "batched_mm", "grouped_mm", "mixkit"]


def build(args: argparse.Namespace) -> torch.nn.Module:
    d, E, k, H = args.d_model, args.experts, args.k, args.hidden
    common = dict(
        vocab_size=args.vocab,
        hidden_size=d,
        num_hidden_layers=args.layers,
        num_attention_heads=d // 64,
        num_key_value_heads=d // 64,
        max_position_embeddings=4096,
        output_router_logits=True,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
    )
    if args.arch == "qwen3_moe":
        cfg = Qwen3MoeConfig(
            **common, head_dim=64, moe_intermediate_size=H, num_experts=E, num_experts_per_tok=k
        )
    elif args.arch == "olmoe":
        cfg = OlmoeConfig(**common, intermediate_size=H, num_experts=E, num_experts_per_tok=k)
    else:
        cfg = MixtralConfig(
            **common, intermediate_size=H, num_local_experts=E, num_experts_per_tok=k
        )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, experts_implementation="eager")
    return model.to(args.dtype)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of fn()."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def train_step(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    return timed(lambda: model(ids, labels=ids).loss.backward())


def prefill(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, float]:
    with torch.inference_mode():
        return timed(lambda: model(ids))


def decode(model: torch.nn.Module, prompt: torch.Tensor, new: int) -> tuple[float, float]:
    """Tokens per CPU second and per wall second of greedy generation, batch 1 (the 8-token
    prompt's prefill included)."""
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
    cpu, wall = timed(lambda: model.generate(prompt, **kw))
    return new / cpu, new / wall


def check(model: torch.nn.Module, ids: torch.Tensor, impls: list[str], tol: float) -> None:
    """Every variant's logits close to eager's on a slice of the batch (a bench of wrong
    numbers is no bench)."""
    x = ids[:1, :128]
    with torch.inference_mode():
        model.set_experts_implementation("eager")
        want = model(x).logits.float()
        for impl in impls:
            model.set_experts_implementation(impl)
            err = (model(x).logits.float() - want).abs().max().item()
            assert err <= tol * max(1.0, want.abs().max().item()), (impl, err)


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    model = build(args)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens // args.batch), generator=g)
    prompt = ids[:1, :8]
    check(model, ids, args.impls, 1e-4 if args.dtype == torch.float32 else 5e-2)
    phases = {
        "train": lambda: train_step(model.train(), ids),
        "prefill": lambda: prefill(model.eval(), ids),
        "decode": lambda: decode(model.eval(), prompt, args.new) if args.new else (0.0, 0.0),
    }
    times: dict[str, dict[str, list[tuple[float, float]]]] = {i: {} for i in args.impls}
    for phase, fn in phases.items():  # one phase at a time, variants interleaved within it
        model.zero_grad(set_to_none=True)  # no gradients held through prefill and decode
        for rep in range(args.repeats + 1):  # the first round warms up and is not kept
            for impl in args.impls:
                model.set_experts_implementation(impl)
                t = fn()
                if rep:
                    times[impl].setdefault(phase, []).append(t)
    model.zero_grad(set_to_none=True)
    return {
        impl: {
            "train": min(cpu for cpu, _ in c["train"]),
            "train_wall": min(wall for _, wall in c["train"]),
            "prefill": min(cpu for cpu, _ in c["prefill"]),
            "prefill_wall": min(wall for _, wall in c["prefill"]),
            "decode": max(cpu for cpu, _ in c["decode"]),
            "decode_wall": max(wall for _, wall in c["decode"]),
        }
        for impl, c in times.items()
    }


def table(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> str:
    hf = {k: v for k, v in results.items() if k != "mixkit"}
    best = {c: min(v[c] for v in hf.values()) for c in ("train", "prefill")} if hf else {}
    best["decode"] = max((v["decode"] for v in hf.values()), default=0.0)
    rows = [
        f"{args.arch}: d_model={args.d_model} E={args.experts} k={args.k} "
        f"H={args.hidden} layers={args.layers} vocab={args.vocab} T={args.tokens} "
        f"(batch {args.batch}) {str(args.dtype).removeprefix('torch.')} "
        f"threads={torch.get_num_threads()}, best of {args.repeats}; CPU time (wall in brackets); "
        "x: time / the fastest HF backend's (decode: tokens/s / the fastest's)",
        "",
        "| experts_implementation | train fwd+bwd (s) | x | prefill fwd (s) | x | "
        f"decode tok/s ({args.new} new) | x |",
        "|---|---|---|---|---|---|---|",
    ]
    for impl, r in results.items():
        rel = [r[c] / best[c] if best.get(c) else float("nan") for c in ("train", "prefill")]
        dec = r["decode"] / best["decode"] if best["decode"] else float("nan")
        rows.append(
            f"| {impl} | {r['train']:.3f} ({r['train_wall']:.3f}) | {rel[0]:.2f} | "
            f"{r['prefill']:.3f} ({r['prefill_wall']:.3f}) | {rel[1]:.2f} | "
            f"{r['decode']:.1f} ({r['decode_wall']:.1f}) | {dec:.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", choices=["qwen3_moe", "olmoe", "mixtral"], default="qwen3_moe")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("-E", "--experts", type=int, default=64)
    p.add_argument("-k", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256, help="each expert's d_hidden")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step (T)")
    p.add_argument("--batch", type=int, default=8, help="sequences the T tokens are split into")
    p.add_argument("--new", type=int, default=32, help="decoded tokens (0: no decode column)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=["eager", "grouped_mm", "mixkit"])
    p.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    args = p.parse_args()
    if args.quick:
        args.d_model, args.experts, args.hidden, args.tokens, args.repeats = 128, 8, 64, 256, 1
        args.new = 4
    args.dtype = torch.bfloat16 if args.bf16 else torch.float32
    torch.set_num_threads(args.threads)
    print(table(args, run(args)))


if __name__ == "__main__":
    main()
