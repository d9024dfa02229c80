"""`mixkit serve`: parse -> build the mixtures and the app -> run uvicorn."""

from __future__ import annotations

from pathlib import Path

import typer

from mixkit.cli.app import app, err_console
from mixkit.moa import load_config


@app.command()
def serve(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="address to bind (default: loopback only)"
    ),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port"),
    config: list[Path] = typer.Option(  # noqa: B008 (typer's idiom)
        [], "--config", "-c", help="a MoA config TOML, served under its name (repeatable)"
    ),
    api_key_env: str | None = typer.Option(
        None,
        "--api-key-env",
        help="require 'Authorization: Bearer <key>', key read from this env var",
    ),
    max_concurrent: int = typer.Option(
        32, "--max-concurrent", min=1, help="runs at once; past it requests get 429 at once"
    ),
    max_tokens: int = typer.Option(
        4096, "--max-tokens", min=1, help="the largest max_tokens a request may ask for"
    ),
    grace: float = typer.Option(
        30.0, "--grace", min=0, help="seconds in-flight requests get to finish on shutdown"
    ),
    no_log: bool = typer.Option(False, "--no-log", help="do not record runs in the log database"),
    log_level: str = typer.Option(
        "warning", "--log-level", help="uvicorn log level (info adds an access log)"
    ),
) -> None:
    """Serve the mixtures (presets + --config files) as an OpenAI-compatible API."""
    # lazy: fastapi and uvicorn are slow to import, which no other command should pay for
    from mixkit.serve import Mixtures, ServeSettings, create_app, server
    from mixkit.serve.mixtures import check_unique  # lazy: as above
    from mixkit.serve.settings import api_key_from_env  # lazy: as above

    configs = [load_config(p) for p in config]
    check_unique(configs)
    settings = ServeSettings(
        host=host,
        port=port,
        api_key=api_key_from_env(api_key_env),
        max_concurrent=max_concurrent,
        max_tokens=max_tokens,
        grace_s=grace,
        log=not no_log,
    )
    mixtures = Mixtures(configs, log=settings.log)
    sock = server.bind(host, port)
    bound_port = sock.getsockname()[1]
    err_console.print(
        f"mixkit serve: http://{host}:{bound_port}/v1  models: {', '.join(mixtures.names())}  "
        f"auth: {'on' if settings.api_key else 'off'}  max concurrent runs: {max_concurrent}",
        highlight=False,
    )
    server.run(create_app(mixtures, settings), sock, grace_s=grace, log_level=log_level)
