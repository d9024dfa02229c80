"""`mixkit demo`: watch an MoE layer learn to route (parse -> mixkit.train.demo -> render)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mixkit.cli.app import app, missing_extra


@app.command()
def demo(
    router: str = typer.Option(
        "noisy_topk", help="noisy_topk | topk | switch | expert_choice | sigmoid_bias"
    ),
    experts: int = typer.Option(8, "--experts", "-e", help="number of experts"),
    k: int = typer.Option(2, "-k", help="experts per token"),
    steps: int = typer.Option(300, help="training steps"),
    clusters: int = typer.Option(4, help="clusters in the synthetic data"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Train an MoE layer and a dense FFN of equal active compute on clustered data; show routing."""
    try:
        from mixkit.train.demo import routing_demo  # lazy: torch (see cli/train.py)
    except ImportError as e:
        raise missing_extra(e, "moe") from None

    console = Console()
    k = 1 if router == "switch" else k
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("training", total=max(steps, 1), info="")

        def on_step(step: int, moe_mse: float, dense_mse: float, balance: float) -> None:
            if step % 10 == 1 or step == steps:
                info = f"mse moe {moe_mse:.3f}  dense {dense_mse:.3f}  load min/max {balance:.2f}"
                progress.update(task, info=info)
            progress.advance(task)

        result = routing_demo(router, experts, k, steps, clusters, seed, on_step)
    console.print(
        f"[bold]MoE[/] E={experts} k={k} router={router}: {result.moe_params:,} parameters, "
        f"{result.moe_macs_per_token:,} active multiply-adds/token; "
        f"[bold]dense[/] width {k * 32}: {result.dense_params:,} parameters"
    )
    table = Table(title="share of each cluster's assignments per expert (eval)")
    table.add_column("cluster")
    for expert in range(experts):
        table.add_column(f"e{expert}", justify="right")
    for ci, share in enumerate(result.share):
        table.add_row(str(ci), *[f"{v:.0%}" if v >= 0.005 else "." for v in share])
    console.print(table)
    console.print(
        f"held-out mse: [bold]MoE {result.moe_mse:.4f}[/] vs dense {result.dense_mse:.4f} at "
        f"equal active compute; router entropy {result.router_entropy:.2f} nats"
    )
