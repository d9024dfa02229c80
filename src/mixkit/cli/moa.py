"""`mixkit ask`, `mixkit logs`, `mixkit eval`: parse -> call mixkit.moa / mixkit.evals -> render.

The answer streams to stdout; progress and the per-layer summary go to stderr, so
`mixkit ask "..." > answer.txt` keeps only the answer. `--json` prints one JSON object instead.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mixkit.cli.app import app
from mixkit.cli.gate import gate_line
from mixkit.moa import Answer, CallRecord, MoA, MoAConfig, Reasoning, resolve
from mixkit.moa import logs as run_log  # `logs` is the command below
from mixkit.moa.engine.output import check_spec
from mixkit.moa.engine.structured import OutputSpec, OutputSpecError, describe

console = Console()
err = Console(stderr=True)

DEFAULT_QUESTION = "In three sentences: why do several small language models, combined, sometimes beat one of them alone?"


def _layer_table(calls: list[CallRecord], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("layer", "ok/calls", "slowest agent", "slowest s", "prompt tok", "completion tok"):
        table.add_column(col, justify="right" if col not in ("slowest agent",) else "left")
    for s in run_log.layer_summary(calls):
        table.add_row(
            str(s.layer),
            f"{s.ok}/{s.calls}",
            s.slowest_agent,
            f"{s.slowest_s:.2f}",
            str(s.prompt_tokens),
            str(s.completion_tokens),
        )
    return table


def _cost(usd: float | None) -> str:
    return "" if usd is None else f", cost ${usd:.6f}"


def _failures(calls: list[CallRecord]) -> list[str]:
    return [f"layer {c.layer} {c.agent}: {c.error}" for c in calls if c.error]


def _programs(calls: list[CallRecord], code: bool) -> list[str]:
    """Rich markup lines: each program agent attempt's status, sandbox mode, time and output
    (or error), and with `code` the program itself (dim)."""
    lines = []
    for c in calls:
        for p in c.programs or []:
            printed = (p.get("output") or "").strip().splitlines()
            what = f"printed {printed[-1]!r}" if p["status"] == "ok" and printed else p.get("error")
            lines.append(
                f"[blue]layer {c.layer} {escape(c.agent)} program {p['attempt']}: {p['status']}"
                f" ({p.get('mode')}, {p.get('wall_s') or 0:.2f}s) {escape(str(what or ''))}[/]"
            )
            if code:
                lines.append(f"[dim]{escape(p['program'])}[/]")
    return lines


# `mixkit ask`'s options, one line each in its signature
Question = Annotated[str, typer.Argument(help="the question (default: a demo question)")]
Preset = Annotated[
    str | None,
    typer.Option(
        "--preset",
        "-p",
        help="a bundled preset: gated (default), gated-vote, self-moa, moa-lite, moa, moa-tiny",
    ),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", "-c", help="a TOML file with your own agents and layers")
]
AsJson = Annotated[
    bool, typer.Option("--json", help="print one JSON object (answer + trace) instead of streaming")
]
MaxTokens = Annotated[
    int | None, typer.Option("--max-tokens", min=1, help="cap every agent's max_tokens")
]
Deadline = Annotated[
    float | None, typer.Option("--deadline", min=0.1, help="per-call deadline in seconds")
]
Continue = Annotated[
    bool, typer.Option("--continue", help="continue the latest conversation (multi-turn)")
]
Cid = Annotated[str | None, typer.Option("--cid", help="continue this conversation id")]
NoLog = Annotated[bool, typer.Option("--no-log", help="do not record this run in the log database")]
SchemaFile = Annotated[
    Path | None,
    typer.Option("--schema", help="answer JSON valid for this JSON-schema file (constrained)"),
]
JsonMode = Annotated[bool, typer.Option("--json-object", help="answer with a JSON object")]


def _output(schema: Path | None, json_object: bool, live: bool) -> OutputSpec | None:
    """The structured output asked for by --schema / --json-object (exit 2 on a bad file)."""
    if schema is None and not json_object:
        return None
    rf: dict = {"type": "json_object"}
    if schema is not None:
        try:
            value = json.loads(schema.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise typer.BadParameter(f"{schema}: cannot read a JSON schema ({e})") from None
        rf = {"type": "json_schema", "json_schema": {"name": schema.stem, "schema": value}}
    spec = OutputSpec(response_format=rf, live=live)
    try:
        check_spec(spec)
    except OutputSpecError as e:
        raise typer.BadParameter(f"{schema}: {e}") from None
    return spec


@app.command()
def ask(
    question: Question = DEFAULT_QUESTION,
    preset: Preset = None,
    config: ConfigFile = None,
    as_json: AsJson = False,
    max_tokens: MaxTokens = None,
    deadline: Deadline = None,
    cont: Continue = False,
    cid: Cid = None,
    no_log: NoLog = False,
    schema: SchemaFile = None,
    json_object: JsonMode = False,
) -> None:
    """Ask a Mixture-of-Agents; the final answer streams as it is generated."""
    cfg = resolve(preset, config)
    messages: list[dict[str, str]] = []
    if cont or cid:
        convo = run_log.conversation(cid)
        if convo is None:
            raise typer.BadParameter(
                "no earlier conversation to continue (run `mixkit logs` to see ids)"
            )
        cid, messages = convo.id, convo.messages
    moa = MoA(cfg, log=not no_log)
    output = _output(schema, json_object, live=not as_json)
    if not as_json:
        err.print(f"[dim]{_shape(cfg)}[/]")
    stream = moa.stream(
        question,
        messages=messages,
        max_tokens=max_tokens,
        deadline_s=deadline,
        conversation_id=cid,
        on_layer=None if as_json else _layer_progress,
        output=output,
    )

    async def consume() -> None:
        async for piece in stream:
            if as_json:
                continue
            if isinstance(piece, Reasoning):  # a program agent's program: dim, on stderr
                err.print(escape(piece), style="dim", end="", highlight=False, soft_wrap=True)
                continue
            sys.stdout.write(piece)
            sys.stdout.flush()

    asyncio.run(consume())
    answer = stream.result
    assert answer is not None
    if as_json:
        console.print_json(json.dumps(answer.to_dict()))
        return
    sys.stdout.write("\n")
    _summary(answer, cfg.name)


def _layer_progress(layer_no: int, calls: list[CallRecord]) -> None:
    """One line on stderr as each proposer layer ends."""
    ok = sum(c.outcome == "ok" for c in calls)
    slowest = max((c.latency_s or 0.0) for c in calls)
    err.print(f"[dim]layer {layer_no}: {ok}/{len(calls)} agents answered in {slowest:.1f}s[/]")


def _shape(cfg: MoAConfig) -> str:
    """One line on what a mixture will do, shown before its answer streams."""
    if cfg.gate is not None:
        return (
            f"{cfg.name}: a gate picks among {len(cfg.layers[0].agents)} slots (up to {cfg.gate.k})"
        )
    return f"{cfg.name}: {cfg.num_layers} layers, aggregator {cfg.aggregator}"


def _summary(answer: Answer, name: str) -> None:
    """After the answer (on stderr): the per-layer table, failures, the gate, times and tokens."""
    err.print(_layer_table(answer.calls, f"run {answer.run_id[:12]} ({name})"))
    for line in _failures(answer.calls):
        err.print(f"[yellow]{escape(line)}[/]")
    for line in _programs(answer.calls, code=False):
        err.print(line, highlight=False)
    gate = gate_line(answer.gate, answer.early_exit)
    if gate:
        err.print(f"[magenta]{escape(gate)}[/]", highlight=False)
    if (note := describe(answer.structured)) is not None:
        err.print(f"[magenta]{escape(note)}[/]", highlight=False)
    err.print(
        f"wall {answer.wall_s:.2f}s, critical path {answer.critical_path_s:.2f}s, time to first answer token "
        f"{answer.ttft_s or 0:.2f}s, tokens {answer.prompt_tokens} in / {answer.completion_tokens} out"
        + _cost(answer.cost_usd)
    )


@app.command()
def logs(
    n: int = typer.Option(3, "--n", "-n", min=1, help="how many recent runs"),
    run: str | None = typer.Option(None, "--run", help="show one run by id (or id prefix)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    db_path: Path | None = typer.Option(  # noqa: B008 (typer's idiom)
        None, "--db", help="log database (default $MIXKIT_HOME/logs.db)"
    ),
) -> None:
    """Show recent MoA runs: a per-layer table, the critical path and the total tokens."""
    path = db_path or run_log.default_db_path()
    if not path.exists():
        err.print(f"no runs logged yet at {path} (run `mixkit ask`)")
        return
    if run:
        one = run_log.get_run(run, db=path)
        if one is None:
            raise typer.BadParameter(f"no single run matches '{run}'")
        runs = [one]
    else:
        runs = run_log.recent_runs(n, db=path)
    if as_json:
        console.print_json(json.dumps([r.to_dict() for r in runs]))
        return
    for r in runs:
        console.print(
            f"[bold]{r.id[:12]}[/] {r.preset} [dim]conversation {r.conversation_id[:12]}[/] outcome [bold]{r.outcome}[/]"
        )
        console.print(f"[cyan]Q:[/] {escape(r.question[:200])}")
        if r.answer:
            console.print(f"[cyan]A:[/] {escape(r.answer[:300])}")
        console.print(_layer_table(r.calls, ""))
        for line in _failures(r.calls):
            console.print(f"[yellow]{escape(line)}[/]")
        for line in _programs(r.calls, code=True):
            console.print(line, highlight=False)
        gate = gate_line(r.gate, r.early_exit)
        if gate:
            console.print(f"[magenta]{escape(gate)}[/]", highlight=False)
        if (note := describe(r.structured)) is not None:
            console.print(f"[magenta]{escape(note)}[/]", highlight=False)
        tokens_in, tokens_out = r.prompt_tokens, r.completion_tokens
        console.print(
            f"critical path {r.critical_path_s or 0:.2f}s, wall {r.wall_s or 0:.2f}s, "
            f"tokens {tokens_in} in / {tokens_out} out ({tokens_in + tokens_out} total)"
            + _cost(r.cost_usd)
            + "\n"
        )
