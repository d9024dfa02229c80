"""`mixkit train` and `mixkit generate`: parse -> call mixkit.train -> render."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mixkit.cli.app import app, missing_extra

console = Console()


class _RichProgress:
    """A rich progress bar fed by the loop's callbacks: loss, tokens/s, expert balance."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        macs = info["active_macs_per_token"]
        console.print(
            f"[bold]{info['name']}[/]: {info['params']:,} params, {macs:,} active multiply-adds/token, "
            f"MoE layers: {', '.join(info['moe_layers']) or 'none'}, {info['threads']} threads"
            + (
                f", {info['world_size']} ranks (expert parallel {info['expert_parallel']})"
                if info.get("world_size", 1) > 1
                else ""
            )
            + (f", resuming at step {info['step']}" if info["resumed"] else "")
        )
        if self.quiet:
            return
        progress = self.progress = Progress(
            TextColumn("[bold blue]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=console,
        )
        progress.start()
        self.task = progress.add_task(
            "train", total=info["total_steps"], completed=info["step"], stats=""
        )

    def on_step(self, step: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=step)

    def on_log(self, rec: dict[str, Any]) -> None:
        if self.progress is None or self.task is None:
            return
        balance = "" if rec["balance"] is None else f"  load max/mean {rec['balance']:.2f}"
        self.progress.update(
            self.task,
            stats=f"loss {rec['loss']:.3f}  {rec['tokens_per_s']:,.0f} tok/s{balance}",
        )

    def on_eval(self, rec: dict[str, Any]) -> None:
        line = (
            f"step {rec['step']}: val loss {rec['val_loss']:.4f}, perplexity {rec['val_ppl']:.2f}"
        )
        (self.progress.console if self.progress else console).print(line)

    def on_end(self, result: object) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


# `mixkit train`'s options, one line each in its signature
Preset = Annotated[
    str | None, typer.Option("--preset", "-p", help="a bundled preset (see --list-presets)")
]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="a TOML config file")]
Data = Annotated[
    Path | None, typer.Option("--data", help="text file or folder (default: Shakespeare)")
]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="run folder (default: runs/<name>)")]
Resume = Annotated[
    bool, typer.Option("--resume", help="continue the run in --out from its checkpoint")
]
Steps = Annotated[int | None, typer.Option("--steps", help="shorthand for --set train.steps=N")]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config field, e.g. --set model.moe.k=1"),
]
ListPresets = Annotated[bool, typer.Option("--list-presets", help="list the presets and exit")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
ExpertParallel = Annotated[
    int,
    typer.Option(
        "--expert-parallel",
        help="under torchrun: split each MoE layer's experts over groups of N ranks "
        "(1: plain data parallelism)",
    ),
]


@app.command()
def train(
    preset: Preset = None,
    config: ConfigFile = None,
    data: Data = None,
    out: Out = None,
    resume: Resume = False,
    steps: Steps = None,
    set_: Sets = None,
    list_presets: ListPresets = False,
    quiet: Quiet = False,
    expert_parallel: ExpertParallel = 1,
) -> None:
    """Train a language model; checkpoints, log.jsonl and PNG plots go to --out.

    Multi-process: torchrun --nproc_per_node N -m mixkit train ... [--expert-parallel N]
    """
    try:
        # lazy: mixkit.train needs torch (the train extra), which `mixkit ask/serve` never load
        from mixkit.train import load_config, plan_run, preset_names
        from mixkit.train import train as run_training  # lazy: as above
    except ImportError as e:
        raise missing_extra(e, "train") from None

    if list_presets:
        for name in preset_names():
            console.print(f"[bold]{name}[/]  {load_config(name).description}")
        return
    plan = plan_run(preset, config, set_ or [], data=data, steps=steps, resume=resume, out=out)
    main_rank = os.environ.get("RANK", "0") == "0"
    progress = _RichProgress(quiet or not main_rank)
    try:
        result = run_training(
            plan.cfg,
            plan.out_dir,
            resume=plan.resume,
            callbacks=[progress],
            expert_parallel=expert_parallel,
            steps=plan.extend_to,
        )
    finally:
        progress.close()
    if main_rank:
        console.print(_summary(result, plan.out_dir, plan.as_shipped))


def _summary(result: Any, out_dir: Path, as_shipped: bool) -> Table:
    """The finished run's figures (`result`: a mixkit.train.TrainResult)."""
    table = Table(title=f"run {out_dir}", show_header=False)
    table.add_row("steps", str(result.steps))
    table.add_row("train loss", f"{result.train_loss:.4f}")
    table.add_row("val loss / perplexity", f"{result.val_loss:.4f} / {result.val_ppl:.2f}")
    if result.test_loss is not None:
        table.add_row("test loss", f"{result.test_loss:.4f}")
    table.add_row("parameters", f"{result.params:,}")
    table.add_row("active multiply-adds / token", f"{result.active_macs_per_token:,}")
    table.add_row("tokens/s (last window)", f"{result.tokens_per_s:,.0f}")
    if result.expect_met is not None and as_shipped:
        # the preset's golden promise holds for the preset as shipped, not for modified runs
        verdict = "met" if result.expect_met else "[red]NOT met[/]"
        table.add_row("preset's expected val loss", verdict)
    table.add_row("plots", ", ".join(str(p) for p in result.plots) or "-")
    return table


@app.command()
def generate(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="a run folder (--out of train) or its checkpoint/")
    ],
    prompt: Annotated[str, typer.Option("--prompt", help="text to continue")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 200,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="0 is greedy")] = 0.8,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="sample among the k likeliest tokens")
    ] = 40,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Sample text from a trained checkpoint."""
    try:
        from mixkit.train import generate_text  # lazy: torch (see `train` above)
    except ImportError as e:
        raise missing_extra(e, "train") from None

    text = generate_text(checkpoint, prompt, max_new_tokens, temperature, top_k, seed)
    typer.echo(text)
