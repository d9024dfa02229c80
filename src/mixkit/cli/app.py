"""The `mixkit` command. Each command group lives in its own module and registers itself here.

Command bodies stay thin: parse -> call the Python API -> render. A `MixkitError` (a user
mistake or a failed backend) is printed as one clear line and exits with status 2; it never
shows a traceback.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

import typer
from rich.console import Console
from rich.markup import escape

from mixkit.errors import MixkitError

# typer >= 0.16 vendors click as typer._click; older ones use click itself. Accept both.
_vendored_click: ModuleType | None
_upstream_click: ModuleType | None
try:
    import typer._click.exceptions as _vendored_click
except ImportError:
    _vendored_click = None
try:
    import click.exceptions as _upstream_click
except ImportError:
    _upstream_click = None

app = typer.Typer(
    name="mixkit",
    help="Mixture-of-Experts layers and language models, and Mixture-of-Agents over LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def missing_extra(e: ImportError, extra: str) -> MixkitError:
    """The one-line error for a command whose optional dependencies are not installed."""
    return MixkitError(
        f"this command needs mixkit's {extra} extra (pip install 'mixkit[{extra}]'): {e}"
    )


def main() -> None:
    # Large CPU tensors that are allocated afresh every step (activations, dense gradients; the
    # fused MoE path pools its expert gradients itself, see mixkit/moe/buffers.py) are cheaper
    # to first-touch on transparent huge pages. torch reads this once, at its import, which
    # happens later, inside the command bodies.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    try:
        app(standalone_mode=False)
    except MixkitError as e:
        where = (
            f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        )
        message = f"[bold red]error{where}:[/] {escape(str(e))}"  # no markup in e
        err_console.print(message, soft_wrap=True)  # one line, however long
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", None)
        if code is None:
            code = getattr(e, "code", 0)
        sys.exit(code or 0)
    except Exception as e:  # usage errors arrive here in standalone_mode=False
        if _is_click_error(e):
            e.show()  # type: ignore[attr-defined]  # a ClickException (checked above)
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        if _is_abort(e):
            err_console.print("[yellow]aborted[/]")
            sys.exit(1)
        raise


def _click_modules() -> list[ModuleType]:
    return [m for m in (_vendored_click, _upstream_click) if m is not None]


def _is_click_error(e: BaseException) -> bool:
    return any(isinstance(e, m.ClickException) for m in _click_modules())


def _is_abort(e: BaseException) -> bool:
    return any(isinstance(e, getattr(m, "Abort", ())) for m in _click_modules())
