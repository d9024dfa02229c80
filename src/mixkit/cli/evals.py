"""`mixkit eval`: score a mixture, its agents and other strategies on checkable tasks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mixkit.cli.app import app
from mixkit.errors import ConfigError
from mixkit.evals import EvalResult, run_eval
from mixkit.evals.collect import AnyTask, ItemResult, new_eval_id
from mixkit.evals.strategies import (
    Row,
    pareto_plot,
    parse_strategies,
    run_strategies,
    summarize,
    systems,
)
from mixkit.evals.tasks import FileTask, Item, Task
from mixkit.moa import Answer, MoAConfig, resolve
from mixkit.moa import trace as tr

console = Console()
err = Console(stderr=True)


def _legacy(cfg: MoAConfig, tasks: list[AnyTask], max_tokens: int, singles: bool,
            as_json: bool, verbose: bool) -> None:  # fmt: skip
    """The MoA and each of its agents alone, task by task: one table per task (JSON: the one
    task's result, or a list of them for several tasks)."""

    def on_item(label: str, item: Item, score: float, answer: Answer | None) -> None:
        if verbose:
            got = (answer.answer if answer else "").strip().splitlines()[-1:] or [""]
            err.print(
                f"[dim]{label} #{item.index}: {score:.2f} expected {item.expected!r}, last line {got[0][:60]!r}[/]"
            )

    results = []
    for task in tasks:
        result = run_eval(cfg, task, max_tokens=max_tokens, singles=singles, on_item=on_item)
        results.append(result.to_dict())
        if not as_json:
            console.print(_scores_table(result))
    if as_json:
        console.print_json(json.dumps(results[0] if len(results) == 1 else results))


def _scores_table(result: EvalResult) -> Table:
    where = (
        f"{result.task}, n={result.n}, seed={result.seed}"
        if result.source == "reasoning-gym"
        else f"{result.source}, n={result.n}"
    )
    table = Table(title=f"{where}, max_tokens={result.max_tokens}", title_justify="left")
    for col in ("system", "accuracy", "failed", "calls", "tokens in", "tokens out", "wall s"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for s in result.scores:
        table.add_row(
            s.system, f"{s.accuracy:.1%}", str(s.failed), str(s.calls), str(s.prompt_tokens),
            str(s.completion_tokens), f"{s.wall_s:.1f}",
        )  # fmt: skip
    return table


def _tasks(names: list[str], tasks_file: Path | None, n: int, seed: int) -> list[AnyTask]:
    """The file's items (checked line by line first), then each named reasoning-gym task;
    basic_arithmetic when neither is given."""
    tasks: list[AnyTask] = [FileTask(tasks_file, n=n)] if tasks_file else []
    defaults = [] if tasks_file else ["basic_arithmetic"]
    return tasks + [Task(t, n=n, seed=seed) for t in (names or defaults)]


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _table(rows: list[Row]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Column names, and (task, cells) per row."""
    priced = any(r.cost_usd is not None for r in rows)
    cols = ["strategy", "n", "accuracy", "TTFT p50 s", "TTFT p90 s", "e2e p50 s", "calls/item",
            "tokens/item", *(["USD/item"] if priced else []), "alone", "early exit", "failed"]  # fmt: skip
    out = []
    for r in rows:
        cells = [
            r.strategy, str(r.n), f"{r.accuracy:.1%}", _fmt(r.ttft_p50, ".2f"),
            _fmt(r.ttft_p90, ".2f"), _fmt(r.e2e_p50, ".2f"), f"{r.calls:.2f}", f"{r.tokens:.0f}",
        ]  # fmt: skip
        if priced:
            cells.append(_fmt(r.cost_usd, ".6f"))
        cells += [_fmt(r.alone, ".0%"), _fmt(r.early_exits, ".0%"), str(r.failed)]
        out.append((r.task, cells))
    return cols, out


def _render(rows: list[Row], title: str, markdown: bool) -> None:
    cols, cells = _table(rows)
    for task in dict.fromkeys(t for t, _ in cells):
        if markdown:
            print(f"\n`{task}` ({title}):\n")
            print("| " + " | ".join(cols) + " |")
            print("|---" + "|---:" * (len(cols) - 1) + "|")
            for t, row in cells:
                if t == task:
                    print("| " + " | ".join(row) + " |")
            continue
        table = Table(title=f"{task} — {title}", title_justify="left")
        for col in cols:
            table.add_column(col, justify="left" if col == "strategy" else "right")
        for t, row in cells:
            if t == task:
                table.add_row(*row)
        console.print(table)


@app.command("eval")
def eval_(
    preset: str | None = typer.Option(None, "--preset", "-p", help="the mixture to score"),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="a TOML config instead of a preset"
    ),  # noqa: B008
    task: list[str] = typer.Option(
        [], "--task", "-t", help="a reasoning-gym task name (repeatable; default basic_arithmetic)"
    ),  # noqa: B008
    tasks_file: Path | None = typer.Option(
        None,
        "--tasks-file",
        help="your own checkable set: JSONL of {question, expected, scorer} (with or without -t)",
    ),  # noqa: B008
    n: int = typer.Option(20, "--n", "-n", min=1, help="items per task"),
    seed: int = typer.Option(0, "--seed", help="dataset seed"),
    max_tokens: int = typer.Option(
        128, "--max-tokens", min=1, help="max_tokens of every call of every system"
    ),
    singles: bool = typer.Option(
        True, "--singles/--no-singles", help="also score each agent alone (without --strategies)"
    ),
    strategies: str | None = typer.Option(
        None,
        "--strategies",
        help="compare strategies: single,single=AGENT[*N],vote,vote-agents,vote-weighted,moa,moa=PRESET,gated,gated+exit,gated+budgets",
    ),
    samples: int = typer.Option(
        1,
        "--samples",
        min=1,
        help="with --strategies: answers per item from each single agent (votes use them)",
    ),
    db: Path | None = typer.Option(
        None, "--db", help="store runs and scored items here (default $MIXKIT_HOME/logs.db)"
    ),  # noqa: B008
    no_log: bool = typer.Option(False, "--no-log", help="store nothing"),
    plot: Path | None = typer.Option(
        None, "--plot", help="with --strategies: write a Pareto plot (PNG) of accuracy against TTFT"
    ),  # noqa: B008
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    markdown: bool = typer.Option(
        False, "--markdown", help="with --strategies: print Markdown tables"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="print each item's score"),
) -> None:
    """Score a mixture on checkable tasks: against its agents alone, or across strategies."""
    cfg = resolve(preset, config)
    if strategies is None and (samples > 1 or plot):
        raise ConfigError("--samples and --plot need --strategies (e.g. --strategies single,moa)")
    names = None if strategies is None else parse_strategies(strategies)  # before slow tasks
    tasks = _tasks(task, tasks_file, n, seed)
    if names is None:
        _legacy(cfg, tasks, max_tokens, singles, as_json, verbose)
        return
    _strategies(cfg, tasks, n, seed, max_tokens, names, samples, db, no_log, plot, as_json,
                markdown, verbose)  # fmt: skip


def _strategies(cfg: MoAConfig, tasks: list[AnyTask], n: int, seed: int, max_tokens: int,
                names: list[str], samples: int, db: Path | None, no_log: bool, plot: Path | None,
                as_json: bool, markdown: bool, verbose: bool) -> None:  # fmt: skip
    plan = systems(cfg, names, samples)
    runs = sum(t.n for t in tasks) * sum(count for _, _, _, count in plan)
    db_path = None if no_log else (db or tr.default_db_path())
    eval_id = new_eval_id()
    conn = tr.connect(db_path) if db_path else None
    progress = Progress(
        TextColumn("[dim]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=as_json,
    )  # fmt: skip
    with progress:
        bar = progress.add_task(f"{cfg.name}: {len(plan)} systems", total=runs)

        def on_result(r: ItemResult) -> None:
            if conn is not None:
                tr.record_eval_items(conn, [r.row(eval_id)])
            progress.advance(bar)
            if verbose:
                err.print(f"[dim]{r.system} {r.task}#{r.item.index}.{r.sample}: {r.score:.2f} "
                          f"answer {r.answer!r} expected {r.item.expected!r}[/]")  # fmt: skip

        try:
            results = asyncio.run(run_strategies(
                cfg, tasks, names, samples=samples, max_tokens=max_tokens,
                log=str(db_path) if db_path else False, on_result=on_result,
            ))  # fmt: skip
        finally:
            if conn is not None:
                conn.close()
    rows = summarize(results)
    title = f"{cfg.name}, n={n}, seed={seed}, max_tokens={max_tokens}, eval {eval_id[:12]}"
    if plot:
        pareto_plot(rows, plot, title=f"{cfg.name}: accuracy vs TTFT (n={n} per task)")
        err.print(f"wrote {plot}")
    if as_json:
        console.print_json(json.dumps({"eval_id": eval_id, "rows": [r.to_dict() for r in rows]}))
        return
    _render(rows, title, markdown)
    if db_path:
        err.print(
            f"[dim]stored as eval {eval_id} in {db_path} (`mixkit gate train --db {db_path}`)[/]"
        )
