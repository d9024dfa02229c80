"""PNG plots from a run's log.jsonl (matplotlib, Agg backend: no display needed).

- loss.png: training loss and validation loss against step.
- expert_load.png: for each MoE layer, a heatmap of the fraction of assignments each expert got
  (rows: experts, columns: logging windows over time). An even layer is one flat colour.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def read_log(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in Path(path).read_text("utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _pyplot():
    # lazy: matplotlib (the train extra) is slow to import, and the Agg backend must be
    # chosen before pyplot is imported; only runs that plot pay for it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: see above

    return plt


def plot_losses(
    runs: dict[str, list[dict[str, Any]]],
    out: Path,
    title: str = "",
    val_only: bool = False,
    since_step: int = 0,
) -> Path:
    """One figure: train (thin) and validation (thick, markers) loss of each named run.
    `val_only` and `since_step` zoom in on the end of training, where runs differ."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for i, (name, records) in enumerate(runs.items()):
        color = f"C{i}"
        train = [
            (r["step"], r["loss"])
            for r in records
            if r.get("event") == "train" and r["step"] >= since_step
        ]
        val = [
            (r["step"], r["val_loss"])
            for r in records
            if r.get("event") == "eval" and r["step"] >= since_step
        ]
        if train and not val_only:
            ax.plot(*zip(*train, strict=True), color=color, alpha=0.45, lw=1, label=f"{name} train")
        if val:
            ax.plot(
                *zip(*val, strict=True), color=color, lw=2, marker="o", ms=3, label=f"{name} val"
            )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_expert_load(records: list[dict[str, Any]], out: Path) -> Path | None:
    """Heatmap per MoE layer of expert load over time; None for a dense model."""
    train = [r for r in records if r.get("event") == "train" and r.get("expert_load")]
    if not train:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # lazy: matplotlib (see _pyplot)

    layers = list(train[0]["expert_load"])
    fig, axes = plt.subplots(
        len(layers), 1, figsize=(8, 2.2 + 1.6 * len(layers)), dpi=110, squeeze=False
    )
    steps = [r["step"] for r in train]
    for ax, layer in zip(axes[:, 0], layers, strict=True):
        load_EW = np.array([r["expert_load"][layer] for r in train]).T  # (experts, windows)
        E = load_EW.shape[0]
        im = ax.imshow(
            load_EW,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=0,
            vmax=max(2.0 / E, float(load_EW.max())),
            # one log window: give it a width of one step instead of a degenerate axis
            extent=(steps[0] - (steps[0] == steps[-1]), steps[-1], E - 0.5, -0.5),
        )
        ax.set_ylabel(f"{layer}\nexpert")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=ax, label="share of assignments")
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"expert load over time (even = {1 / E:.3f})")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_run(out_dir: Path) -> list[Path]:
    """Write loss.png (and expert_load.png for an MoE model) into out_dir; returns the paths."""
    out_dir = Path(out_dir)
    records = read_log(out_dir / "log.jsonl")
    name = next((r.get("name") for r in records if r.get("event") == "start"), "run")
    paths = [plot_losses({name: records}, out_dir / "loss.png", title=f"{name}: loss")]
    heat = plot_expert_load(records, out_dir / "expert_load.png")
    if heat is not None:
        paths.append(heat)
    return paths
