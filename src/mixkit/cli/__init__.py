"""The `mixkit` command: app.py holds the app and `main`; each command group is one module that
registers its commands on the app when imported (below). Heavy imports (torch, fastapi) happen
inside command bodies, so `mixkit --help` and `mixkit ask` stay fast."""

from mixkit.cli import (  # noqa: F401 (they register their commands)
    convert,
    demo,
    evals,
    gate,
    moa,
    serve,
    train,
)
from mixkit.cli.app import app, main

__all__ = ["app", "main"]
