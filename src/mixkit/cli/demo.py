"""`mixkit demo`: watch an MoE layer learn to route.

The data is a mixture of C clusters, each with its own random linear map. A dense FFN must fit all
maps at once; the MoE's router can learn to send each cluster to its own experts. The demo trains
both at equal active compute and prints the loss of each, then which experts each cluster uses.
"""

from __future__ import annotations

import typer

from mixkit.cli.app import app
from mixkit.errors import ConfigError


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
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from mixkit.moe import MoE, update_router_biases

    if steps < 1:
        raise ConfigError(f"--steps ({steps}) must be >= 1")
    if clusters < 1:
        raise ConfigError(f"--clusters ({clusters}) must be >= 1")
    if router == "switch" and k != 1:
        k = 1  # switch is top-1 by definition
    console = Console()
    torch.manual_seed(seed)
    d, h = 32, 32
    try:
        moe = MoE(d, h, experts, k=k, router=router)
    except ValueError as e:
        raise ConfigError(f"{e} (check --router, --experts and -k)") from None
    dense = torch.nn.Sequential(
        torch.nn.Linear(d, k * h), torch.nn.ReLU(), torch.nn.Linear(k * h, d)
    )
    centers = torch.randn(clusters, d) * 3
    maps = torch.randn(clusters, d, d) / d**0.5

    def batch(n=512):
        c = torch.randint(clusters, (n,))
        x = centers[c] + torch.randn(n, d)
        return x, torch.einsum("nd,nde->ne", x, maps[c]), c

    opt_moe = torch.optim.Adam(moe.parameters(), lr=3e-3)
    opt_dense = torch.optim.Adam(dense.parameters(), lr=3e-3)
    console.print(
        f"[bold]MoE[/] E={experts} k={k} router={router}: {moe.num_parameters():,} parameters, "
        f"{moe.active_macs_per_token():,} active multiply-adds/token; "
        f"[bold]dense[/] width {k * h}: {sum(p.numel() for p in dense.parameters()):,} parameters"
    )
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("training", total=steps, info="")
        for step in range(steps):
            x, y, _ = batch()
            loss_moe = torch.nn.functional.mse_loss(moe(x), y)
            opt_moe.zero_grad()
            (loss_moe + moe.aux_loss).backward()
            opt_moe.step()
            update_router_biases(moe)
            loss_dense = torch.nn.functional.mse_loss(dense(x), y)
            opt_dense.zero_grad()
            loss_dense.backward()
            opt_dense.step()
            if step % 10 == 0 or step == steps - 1:
                load = moe.last_stats.tokens_per_expert
                balance = float(load.min() / load.max().clamp_min(1))
                progress.update(
                    task,
                    info=f"mse moe {loss_moe.item():.3f}  dense {loss_dense.item():.3f}  load min/max {balance:.2f}",
                )
            progress.advance(task)

    moe.eval()
    with torch.no_grad():
        x, y, c = batch(4096)
        final_moe = torch.nn.functional.mse_loss(moe(x), y).item()
        final_dense = torch.nn.functional.mse_loss(dense(x), y).item()
        d_ = moe.last_decision
        table = Table(title="share of each cluster's assignments per expert (eval)")
        table.add_column("cluster")
        for e in range(experts):
            table.add_column(f"e{e}", justify="right")
        for ci in range(clusters):
            mask = c[d_.token_idx_A] == ci
            counts = torch.bincount(d_.expert_idx_A[mask], minlength=experts).float()
            share = counts / counts.sum().clamp_min(1)
            table.add_row(str(ci), *[f"{v:.0%}" if v >= 0.005 else "." for v in share.tolist()])
    console.print(table)
    console.print(
        f"held-out mse: [bold]MoE {final_moe:.4f}[/] vs dense {final_dense:.4f} at equal active compute; "
        f"router entropy {float(moe.last_stats.router_entropy):.2f} nats"
    )
