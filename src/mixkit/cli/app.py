"""The `mixkit` command. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mixkit",
    help="Mixture-of-Experts layers and language models, and Mixture-of-Agents over LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported for their side effect of adding commands to `app`. Heavy imports (torch, llama.cpp)
    # happen inside the command bodies, so `mixkit --help` stays fast.
    from mixkit.cli import demo  # noqa: F401


def main() -> None:
    _register()
    app()
