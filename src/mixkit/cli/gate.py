"""`mixkit gate train | show | route`: learn a gate over agents, see what it learned, try it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mixkit.cli.app import app
from mixkit.errors import ConfigError
from mixkit.moa import resolve
from mixkit.moa import trace as tr
from mixkit.moa.gate import model as g
from mixkit.moa.gate.model import MIX, VOTES, load
from mixkit.moa.gate.plan import plan_run

gate_app = typer.Typer(help="Gated Mixture-of-Agents: train, inspect and try agent gates.")
app.add_typer(gate_app, name="gate")
console = Console()
err = Console(stderr=True)


def _records(
    db: Path | None, jsonl: list[Path], tasks: list[str], exclude: list[str]
) -> list[g.ScoredCall]:

    records: list[g.ScoredCall] = []
    for path in jsonl:
        records += g.read_jsonl(path)
    if db is not None or not jsonl:
        path = db or tr.default_db_path()
        if not path.exists():
            raise ConfigError(f"{path}: no log database (run `mixkit eval` first, or pass --jsonl)")
        conn = tr.connect(path)
        try:
            records += [
                g.ScoredCall(
                    prompt=r["prompt"],
                    agent=r["agent"],
                    score=r["score"],
                    answer=r["answer"],
                    task=r["task"],
                    prompt_tokens=r["prompt_tokens"],
                    completion_tokens=r["completion_tokens"],
                    latency_s=r["wall_s"],
                )  # fmt: skip
                for r in tr.eval_items(conn)
            ]
        finally:
            conn.close()
    if tasks:
        records = [r for r in records if r.task in tasks]
    if exclude:
        records = [r for r in records if r.task not in exclude]
    return records


@gate_app.command("train")
def train(
    out: Path = typer.Option(..., "--out", "-o", help="where to write the gate file (JSON)"),  # noqa: B008
    db: Path | None = typer.Option(
        None, "--db", help="learn from `mixkit eval` results in this log database"
    ),  # noqa: B008
    jsonl: list[Path] = typer.Option(
        [], "--jsonl", help="learn from scored calls in a JSONL file (repeatable)"
    ),  # noqa: B008
    features: str = typer.Option(
        "text", "--features", help="prompt features: text, wordllama or e5"
    ),
    mix_k: int = typer.Option(3, "--mix-k", min=1, help="agents a mixed answer votes over"),
    votes: int = typer.Option(
        3, "--votes", min=1, help="vote candidates: the most samples of one agent (1: none)"
    ),
    agree: int = typer.Option(
        2, "--agree", min=1, help="vote candidates stop when this many agree"
    ),
    task: list[str] = typer.Option([], "--task", help="train only on these tasks (repeatable)"),  # noqa: B008
    exclude_task: list[str] = typer.Option(
        [], "--exclude-task", help="leave these tasks out (repeatable)"
    ),  # noqa: B008
) -> None:
    """Learn which agents answer which prompts well, from eval results and/or scored calls.

    Several samples of one agent on a prompt (`mixkit eval --samples N`) also teach the gate
    where a vote of that agent's samples pays (its vote candidate, used when a mixture's gate
    sets votes = true).
    """

    records = _records(db, jsonl, task, exclude_task)
    sources = [str(p) for p in jsonl]
    if db is not None or not jsonl:  # the log database was read too (see _records)
        sources.append(str(db or tr.default_db_path()))
    if votes > 1 and agree > votes:
        raise ConfigError(f"--agree ({agree}) is more than --votes ({votes})")
    gate = g.train(
        records, features=features, mix_k=mix_k, source=", ".join(sources), votes=votes, agree=agree
    )
    gate.save(out)
    prompts = len({r.prompt for r in records})
    err.print(f"trained on {len(records)} scored calls ({prompts} prompts), wrote {out}")
    _show(gate, str(out))


@gate_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", "-o", help="the JSONL file to write"),
    db: Path | None = typer.Option(
        None, "--db", help="the log database (default $MIXKIT_HOME/logs.db)"
    ),
    task: list[str] = typer.Option([], "--task", help="only these tasks (repeatable)"),
) -> None:
    """Write the scored single-agent answers of `mixkit eval` runs as JSONL (`gate train --jsonl`)."""
    records = _records(db, [], task, [])
    out.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    err.print(f"wrote {len(records)} scored calls to {out}")


def _show(gate: g.Gate, name: str) -> None:
    console.print(
        f"[bold]gate {name}[/]: features {gate.features}, agents {', '.join(gate.agents)}, "
        f"mix = vote of {gate.mix_k}"
        + "".join(
            f"; {VOTES}{a} = {g.vote_rule(v.votes, v.agree)} ({v.samples:.2f} drawn on average)"
            for a, v in gate.votes.items()
        )
    )
    if gate.source:
        console.print(f"[dim]trained on: {gate.source}[/]")
    table = Table(title="per training task: real accuracy of each candidate, and the gate's picks")
    candidates = [*gate.agents, MIX, *(VOTES + a for a in gate.votes)]
    table.add_column("task")
    table.add_column("n", justify="right")
    for c in candidates:
        table.add_column(c, justify="right")
    table.add_column("gate picks")
    for task, s in gate.tasks.items():
        accs = [s["accuracy"].get(c) for c in candidates]
        best = max((a for a in accs if a is not None), default=None)
        cells = [
            "–" if a is None else (f"[bold]{a:.0%}[/]" if a == best else f"{a:.0%}") for a in accs
        ]
        picks = ", ".join(f"{k} {v}" for k, v in sorted(s["picks"].items(), key=lambda kv: -kv[1]))
        table.add_row(task, str(s["n"]), *cells, picks)
    console.print(table)


@gate_app.command("show")
def show(
    gate_file: str = typer.Argument("default", help="a gate file, or a packaged gate's name"),
    as_json: bool = typer.Option(False, "--json", help="print the gate's summary as JSON"),
) -> None:
    """Print what a gate learned: per training task, each candidate's accuracy and the picks."""

    gate = g.load(gate_file)
    if as_json:
        summary = {k: v for k, v in gate.to_dict().items() if k not in ("agents", "mix", "votes")}
        summary["votes"] = {n: {"votes": v.votes, "agree": v.agree, "samples": v.samples,
                                "train_accuracy": v.train_accuracy} for n, v in gate.votes.items()}  # fmt: skip
        summary["agents"] = {n: p.train_accuracy for n, p in gate.agents.items()}
        console.print_json(json.dumps(summary))
        return
    _show(gate, gate_file)


@gate_app.command("route")
def route(
    prompt: str = typer.Argument(..., help="the prompt to route"),
    preset: str | None = typer.Option(
        None, "--preset", "-p", help="a gated preset (default: gated)"
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="a gated TOML config"),  # noqa: B008
) -> None:
    """Show what a gated mixture's gate would do with PROMPT (no model is called)."""
    cfg = resolve(preset or (None if config else "gated"), config)
    if cfg.gate is None:
        raise ConfigError(f"mixture '{cfg.name}' has no [gate] (try -p gated)")
    plan = plan_run(cfg, load(cfg.gate.path), prompt, noise=0.0)
    d = plan.decision
    assert d is not None
    console.print_json(json.dumps(d.to_dict()))


def gate_line(gate: dict | None, early_exit: dict | None = None) -> str | None:
    """One line for `mixkit ask` and `mixkit logs`: what the gate chose, and any early exit."""
    parts = []
    if gate:
        scores = gate.get("scores", {})
        chosen = ", ".join(
            f"{c} (w {w:.2f})" for c, w in zip(gate["chosen"], gate["weights"], strict=False)
        )
        what = {
            "alone": "alone",
            "votes": f"votes ({g.vote_rule(gate.get('votes'), gate.get('agree'))})",
        }.get(gate["strategy"], f"mix of {len(gate['chosen'])}")
        parts.append(
            f"gate: {what}: {chosen}; p(mix) {scores.get('mix', 0):.2f}; "
            f"skipped {', '.join(gate['skipped']) or 'none'}"
            + (" [exploring]" if gate.get("explore") else "")
        )
    if early_exit:
        parts.append(
            f"early exit at layer {early_exit['layer']}: {early_exit['answers']} proposals agreed "
            f"on {early_exit['agreed']!r}"
        )
    return "; ".join(parts) or None
