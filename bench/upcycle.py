"""Sparse upcycling in miniature (Komatsuzaki et al. 2022): validation loss against training FLOPs.

On the default corpus (Shakespeare, byte tokens), one process:
1. dense: a small dense transformer LM trained --steps N steps;
2. from that checkpoint, the same extra compute C spent three ways ("extra" = C FLOPs):
   (i)   dense-continued: the dense model trained on for C FLOPs;
   (ii)  upcycled: its MoE (E experts, each a copy of the dense FFN, a new topk router with
         renormalised top-k, every --every-th block) trained on for C FLOPs;
   (iii) moe-scratch: an MoE of the upcycled model's shape, from random weights, trained for the
         whole budget (the dense run's FLOPs + C).
C is --extra steps of the upcycled model. Training FLOPs are counted as 6 x active multiply-adds
per token x tokens (forward 2, backward 4; `active_macs_per_token`, the k experts a token uses,
the router and the output layer included). The continued runs restart the learning-rate schedule
(warmup, cosine to min_lr over their own steps); every run sees the same batches in order.

    python bench/upcycle.py                 # d=128, 4 layers, E=8 k=2 every 2nd block (minutes)
    python bench/upcycle.py --quick         # tiny, a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import matplotlib
import torch

from mixkit.convert.upcycle import upcycle_model
from mixkit.models import MoESpec
from mixkit.train.config import config_from_dict
from mixkit.train.loop import Trainer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def run_config(args: argparse.Namespace, steps: int, moe: bool, lr: float, seed: int = 0):
    model = {
        "arch": "transformer",
        "d_model": args.d_model,
        "n_layers": args.layers,
        "n_heads": max(1, args.d_model // 32),
        "ffn_hidden": 4 * args.d_model,
        "dropout": 0.0,
    }
    if moe:
        model["moe"] = spec(args).model_dump()
        model["moe_every"] = args.every
    raw = {
        "name": "upcycle-bench",
        "model": model,
        "data": {"tokenizer": "byte"},
        "optim": {"lr": lr, "min_lr": lr / 10, "warmup_steps": max(1, steps // 10)},
        "train": {
            "steps": steps,
            "batch_size": args.batch,
            "seq_len": args.seq,
            "threads": args.threads,
            "seed": seed,
            "log_every": 10**6,
            "eval_every": 10**6,
            "eval_batches": args.eval_batches,
            "checkpoint_every": 10**6,
        },
    }
    return config_from_dict(raw, "bench/upcycle.py")


def spec(args: argparse.Namespace) -> MoESpec:
    d_hidden = 4 * args.d_model  # each expert the dense FFN's size
    return MoESpec(
        num_experts=args.experts, d_hidden=d_hidden, k=args.k, router="topk", renormalize=True
    )


def flops_per_step(trainer: Trainer) -> int:
    loop = trainer.loop
    return 6 * trainer.model.active_macs_per_token() * loop.batch_size * loop.seq_len


def train(trainer: Trainer, name: str, flops0: float, points: int) -> list[tuple[float, float]]:
    """Runs the trainer to its end, evaluating `points` times; returns (FLOPs, val loss)."""
    per, total = flops_per_step(trainer), trainer.loop.steps
    at = {round(total * i / points) for i in range(1, points + 1)}
    curve = []
    while not trainer.finished:
        trainer.step()  # evaluates by itself at the last step
        if trainer.done in at:
            val = trainer.val_loss if trainer.finished else trainer.evaluate_val()
            curve.append((flops0 + trainer.done * per, val))
            print(f"  {name:16s} step {trainer.done:4d}  FLOPs {curve[-1][0]:.3e}  val {val:.4f}")
    return curve


def continued(args, tmp: Path, name: str, moe: bool, steps: int, weights) -> Trainer:
    """A fresh trainer of `steps` steps whose model starts from `weights` (a state dict)."""
    # seed 1: batches drawn afresh, not the dense run's first ones again
    trainer = Trainer(run_config(args, steps, moe, args.lr_continue, seed=1), tmp / name)
    trainer.model.load_state_dict(weights)  # in place: the optimizer holds the same tensors
    return trainer


def experiment(args: argparse.Namespace, tmp: Path) -> dict[str, list[tuple[float, float]]]:
    dense = Trainer(run_config(args, args.steps, False, args.lr), tmp / "dense")
    per_dense = flops_per_step(dense)
    curves = {"dense": train(dense, "dense", 0.0, args.points)}
    base_flops = args.steps * per_dense
    moe_model = upcycle_model(dense.model, spec(args), args.every)
    up = continued(args, tmp, "upcycled", True, args.extra, moe_model.state_dict())
    extra = args.extra * flops_per_step(up)
    dense_steps = round(extra / per_dense)
    dc = continued(args, tmp, "dense-cont", False, dense_steps, dense.model.state_dict())
    curves["dense-continued"] = curves["dense"][-1:] + train(dc, "dense-continued", base_flops, 4)
    curves["upcycled"] = curves["dense"][-1:] + train(up, "upcycled", base_flops, 4)
    scratch_steps = round((base_flops + extra) / flops_per_step(up))
    cfg = run_config(args, scratch_steps, True, args.lr)
    curves["moe-scratch"] = train(Trainer(cfg, tmp / "scratch"), "moe-scratch", 0.0, args.points)
    print(
        f"\ndense {args.steps} steps ({base_flops:.3e} FLOPs); extra {extra:.3e} FLOPs = "
        f"{dense_steps} dense steps = {args.extra} MoE steps; "
        f"moe-scratch {scratch_steps} MoE steps; params: dense {dense.model.num_parameters():,}, "
        f"MoE {up.model.num_parameters():,}; active MACs/token: dense "
        f"{dense.model.active_macs_per_token():,}, MoE {up.model.active_macs_per_token():,}"
    )
    return curves


def table(curves: dict[str, list[tuple[float, float]]]) -> str:
    rows = [
        "| run | training FLOPs | val loss | val perplexity |",
        "|---|---|---|---|",
    ]
    for name, curve in curves.items():
        flops, loss = curve[-1]
        rows.append(f"| {name} | {flops:.3e} | {loss:.4f} | {math.exp(loss):.3f} |")
    dense_end = curves["dense"][-1][1]
    gain = {n: dense_end - curves[n][-1][1] for n in ("dense-continued", "upcycled")}
    rows.append(
        f"\nval-loss drop for the extra compute: dense-continued {gain['dense-continued']:.4f}, "
        f"upcycled {gain['upcycled']:.4f}"
    )
    return "\n".join(rows)


def plot(curves: dict[str, list[tuple[float, float]]], out: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"dense": "k-", "dense-continued": "C0-", "upcycled": "C3-", "moe-scratch": "C2--"}
    for name, curve in curves.items():
        xs, ys = zip(*curve, strict=True)
        ax.plot(xs, [math.exp(y) for y in ys], styles[name], marker="o", ms=3, label=name)
    ax.axvline(curves["dense"][-1][0], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training FLOPs (6 x active multiply-adds x tokens)")
    ax.set_ylabel("validation perplexity (bytes)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=300, help="dense steps before the split (N)")
    p.add_argument("--extra", type=int, default=150, help="extra compute, in upcycled steps")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("-E", "--experts", type=int, default=8)
    p.add_argument("-k", type=int, default=2)
    p.add_argument("--every", type=int, default=2, help="upcycle every N-th block's FFN")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-continue", type=float, default=1e-3)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--points", type=int, default=6, help="evaluations per from-scratch run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot", type=Path, default=Path("docs/images/upcycle.png"))
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    args = p.parse_args()
    if args.quick:
        args.steps, args.extra, args.d_model, args.layers = 20, 8, 32, 2
        args.batch, args.seq, args.eval_batches, args.points = 4, 32, 2, 2
        args.plot = Path(tempfile.gettempdir()) / "upcycle-quick.png"
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        curves = experiment(args, Path(tmp))
    print(table(curves))
    title = (
        f"d={args.d_model}, {args.layers} layers, seq {args.seq}, batch {args.batch}; "
        f"MoE E={args.experts} k={args.k} every {args.every}; dense {args.steps} steps"
    )
    plot(curves, args.plot, title)


if __name__ == "__main__":
    main()
