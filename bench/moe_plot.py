"""Plot ×ideal against E for mixkit and HF from a training table printed by bench/moe_layer.py.

    python bench/moe_plot.py docs/benchmarks.md docs/images/moe_layer_ratio.png

Reads the first table whose header has "mixkit SwiGLU ×ideal" (the train section's), from a saved
bench output or from docs/benchmarks.md, and draws one panel per (T, d_model): the paper's layer,
mixkit SwiGLU and HF grouped_mm, each as a ratio to its dense ideal, against E (log scale).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERIES = {
    "noisy_topk ReLU ×ideal": "mixkit, paper's layer (noisy_topk, ReLU)",
    "mixkit SwiGLU ×ideal": "mixkit SwiGLU",
    "HF grouped_mm ×ideal": "HF grouped_mm (SwiGLU)",
}


def read_train_table(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "mixkit SwiGLU ×ideal" in line)
    header = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("source", type=Path, help="bench output or docs/benchmarks.md")
    p.add_argument("out", type=Path, help="the PNG to write")
    args = p.parse_args()
    rows = read_train_table(args.source.read_text("utf-8"))
    panels = defaultdict(list)
    for r in rows:
        panels[(int(r["T"]), int(r["d_model"]))].append(r)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), sharey=True)
    for ax, ((T, D), prow) in zip(axes, sorted(panels.items()), strict=True):
        Es = [int(r["E"]) for r in prow]
        for column, label in SERIES.items():
            ax.plot(Es, [float(r[column]) for r in prow], marker="o", label=label)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(Es, [str(e) for e in Es])
        ax.set_title(f"T={T}, d_model={D}")
        ax.set_xlabel("experts E")
    axes[0].set_ylabel("time / dense ideal (fwd+bwd)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
