"""`mixkit train` and `mixkit generate`: parse -> call mixkit.train -> render."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from mixkit.cli.app import app

console = Console()


class _RichProgress:
    """A rich progress bar fed by the loop's callbacks: loss, tokens/s, expert balance."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress = None

    def on_start(self, info):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        macs = info["active_macs_per_token"]
        console.print(
            f"[bold]{info['name']}[/]: {info['params']:,} params, {macs:,} active multiply-adds/token, "
            f"MoE layers: {', '.join(info['moe_layers']) or 'none'}, {info['threads']} threads"
            + (f", resuming at step {info['step']}" if info["resumed"] else "")
        )
        if self.quiet:
            return
        self.progress = Progress(
            TextColumn("[bold blue]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=info["total_steps"], completed=info["step"], stats=""
        )

    def on_step(self, step):
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def on_log(self, rec):
        if self.progress is None:
            return
        balance = "" if rec["balance"] is None else f"  load max/mean {rec['balance']:.2f}"
        self.progress.update(
            self.task,
            stats=f"loss {rec['loss']:.3f}  {rec['tokens_per_s']:,.0f} tok/s{balance}",
        )

    def on_eval(self, rec):
        line = f"step {rec['step']}: val loss {rec['val_loss']:.4f}, perplexity {rec['val_ppl']:.2f}"
        (self.progress.console if self.progress else console).print(line)

    def on_end(self, result):
        self.close()

    def close(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@app.command()
def train(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="a bundled preset (see --list-presets)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="a TOML config file"),
    data: Optional[Path] = typer.Option(None, "--data", help="text file or folder (default: Shakespeare)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default: runs/<name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint"),
    steps: Optional[int] = typer.Option(None, "--steps", help="shorthand for --set train.steps=N"),
    set_: list[str] = typer.Option([], "--set", help="override a config field: --set model.moe.k=1"),
    list_presets: bool = typer.Option(False, "--list-presets", help="list the presets and exit"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Train a language model; checkpoints, log.jsonl and PNG plots go to --out."""
    from mixkit.train import load_config, preset_names
    from mixkit.train import train as run_training

    if list_presets:
        for name in preset_names():
            desc = load_config(name).description
            console.print(f"[bold]{name}[/]  {desc}")
        return
    overrides = list(set_)
    if data is not None:
        overrides.append(f"data.path={str(data.expanduser().resolve())!r}")
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    given = preset is not None or config is not None or bool(overrides)
    cfg = load_config(preset, config, overrides) if (given or not resume) else None
    if out is None:
        if cfg is None:
            raise typer.BadParameter("--resume needs --out DIR (the run to continue)")
        out = Path("runs") / (preset or (config.stem if config else cfg.name))
    progress = _RichProgress(quiet)
    try:
        result = run_training(cfg, out, resume=resume, callbacks=[progress])
    finally:
        progress.close()

    table = Table(title=f"run {out}", show_header=False)
    table.add_row("steps", str(result.steps))
    table.add_row("train loss", f"{result.train_loss:.4f}")
    table.add_row("val loss / perplexity", f"{result.val_loss:.4f} / {result.val_ppl:.2f}")
    if result.test_loss is not None:
        table.add_row("test loss", f"{result.test_loss:.4f}")
    table.add_row("parameters", f"{result.params:,}")
    table.add_row("active multiply-adds / token", f"{result.active_macs_per_token:,}")
    table.add_row("tokens/s (last window)", f"{result.tokens_per_s:,.0f}")
    if result.expect_met is not None:
        table.add_row("preset expectation", "met" if result.expect_met else "[red]NOT met[/]")
    table.add_row("plots", ", ".join(str(p) for p in result.plots) or "-")
    console.print(table)


@app.command()
def generate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a run folder (--out of train) or its checkpoint/"),
    prompt: str = typer.Option("", "--prompt", help="text to continue"),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help="0 is greedy"),
    top_k: Optional[int] = typer.Option(40, "--top-k", help="sample among the k likeliest tokens"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Sample text from a trained checkpoint."""
    from mixkit.train import generate_text

    text = generate_text(checkpoint, prompt, max_new_tokens, temperature, top_k, seed)
    typer.echo(text)
