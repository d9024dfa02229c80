"""The paper's language-model claim at laptop scale: dense LSTM vs LSTM-MoE-LSTM, E in {4, 16, 64}.

All runs share the architecture around the FFN slot (LSTM-128, bytes), the active multiply-adds
per token (dense FFN 128->512->128 vs k=2 experts of 128->256->128, plus the router), the data
order and the token budget. They train *interleaved in one process*, one optimizer step each in
turn, so tokens/s are measured under the same machine load (our machines are shared and noisy).

    python bench/lm_compare.py                       # the full experiment (~30 min on 2 cores)
    python bench/lm_compare.py --steps 40 --out /tmp/lmc   # a smoke run

Prints a markdown table and writes the loss-curve PNG (and an expert-load heatmap for the
largest MoE) to --images.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path

import torch

from mixkit.train import Trainer, load_config
from mixkit.train.loop import evaluate
from mixkit.train.plots import plot_expert_load, plot_losses, read_log


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--experts", default="4,16,64", help="MoE sizes to compare with the dense LSTM")
    p.add_argument("--steps", type=int, default=None, help="override train.steps for every run")
    p.add_argument("--threads", type=int, default=1, help="1: robust on a shared machine")
    p.add_argument("--out", default="runs/lm_compare", help="run folders (replaced)")
    p.add_argument("--images", default="docs/images", help="where the PNGs go")
    p.add_argument(
        "--plot-only", action="store_true", help="redraw the PNGs from the logs under --out"
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    if args.plot_only:
        names = [p.name for p in sorted(out.iterdir()) if (p / "log.jsonl").exists()]
        names.sort(key=lambda n: (n != "dense", int(n.split("-")[-1]) if "-" in n else 0))
        plot(out, names, Path(args.images))
        return
    shutil.rmtree(out, ignore_errors=True)
    common = [f"train.threads={args.threads}"]
    if args.steps:
        common.append(f"train.steps={args.steps}")
    runs = {"dense": load_config("shakespeare-lstm-dense", overrides=common)}
    for e in (int(x) for x in args.experts.split(",")):
        sets = [*common, f"model.moe.num_experts={e}", f'name="moe-{e}"']
        runs[f"moe-{e}"] = load_config("shakespeare-lstm-moe", overrides=sets)

    trainers = {name: Trainer(cfg, out / name) for name, cfg in runs.items()}
    t0 = time.time()
    while not all(t.finished for t in trainers.values()):
        for t in trainers.values():  # one step each, in turn: same machine load for all
            if not t.finished:
                t.step()
    wall = time.time() - t0

    rows = []
    for name, t in trainers.items():
        cfg = t.cfg.train
        tokens = t.done * cfg.batch_size * cfg.seq_len
        # the whole validation split, not the periodic subsample
        val = evaluate(t.model, t.corpus.splits["val"], cfg.batch_size, cfg.seq_len, 10**9)
        t.finish(plots=True)
        rows.append(
            {
                "model": name,
                "val_loss": val,
                "val_ppl": math.exp(val),
                "bits_per_byte": val / math.log(2),
                "active_macs": t.macs,
                "params": t.params,
                "params_ex_emb": t.model.num_parameters(exclude_embeddings=True),
                "tokens": tokens,
                "tokens_per_s": tokens / t.train_time,
            }
        )
    dense_tps = rows[0]["tokens_per_s"]

    print(
        f"\n{len(rows)} runs interleaved, {wall / 60:.1f} min wall, torch {torch.__version__}, "
        f"{args.threads} threads, {platform.processor() or platform.machine()}\n"
    )
    print(
        "| model | val perplexity (bytes) | bits/byte | active multiply-adds/token | "
        "parameters (excl. embedding) | tokens | tokens/s | tokens/s vs dense |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['val_ppl']:.3f} | {r['bits_per_byte']:.3f} | {r['active_macs']:,} | "
            f"{r['params']:,} ({r['params_ex_emb']:,}) | {r['tokens'] / 1e6:.1f}M | "
            f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / dense_tps:.2f}x |"
        )
    (out / "results.json").write_text(json.dumps(rows, indent=2), "utf-8")

    plot(out, list(trainers), Path(args.images))


def plot(out: Path, names: list[str], images: Path) -> None:
    images.mkdir(parents=True, exist_ok=True)
    logs = {name: read_log(out / name / "log.jsonl") for name in names}
    title = "dense LSTM vs LSTM-MoE-LSTM (equal ops/token, equal tokens)"
    curve = plot_losses(logs, images / "lm_compare_loss.png", title)
    last = max(r["step"] for r in logs[names[0]] if r.get("event") == "eval")
    zoom = plot_losses(
        logs, images / "lm_compare_val_zoom.png", "validation loss, second half", True, last // 2
    )
    heat = plot_expert_load(logs[names[-1]], images / f"lm_compare_expert_load_{names[-1]}.png")
    print(f"\nplots: {curve}, {zoom}, {heat}")


if __name__ == "__main__":
    main()
