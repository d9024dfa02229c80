"""The web app `mixkit serve` serves at `/`: a playground that shows every agent of a mixture
answering live, and a browser of the logged runs with a timeline of each. No build step: the
page is plain HTML/CSS/JS in `static/`, shipped as package data.

    GET  /                                  the page (static; holds no data)
    GET  /static/{file}                     its scripts and styles
    GET  /api/mixtures                      the mixtures, with their layers and deadlines
    GET  /api/runs?q=&mixture=&outcome=&before=&limit=   logged runs, newest first
    GET  /api/runs/{run_id}                 one run: its calls, gate and conversation
    GET  /api/runs/{run_id}/calls/{call_id} one call, with the prompt it was sent
    POST /api/runs                          start a run; its events stream back as SSE (live.py)

Every `/api` endpoint is same-origin only and needs the bearer key when auth is on (guard.py).
"""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from mixkit.moa import MoAConfig
from mixkit.serve.errors import APIError
from mixkit.serve.web import browse
from mixkit.serve.web.guard import DATA_HEADERS, PAGE_HEADERS, authorized, same_origin
from mixkit.serve.web.live import live_run

STATIC = Path(str(resources.files("mixkit.serve.web") / "static"))


class _Static(StaticFiles):
    """The page's files, with the page's headers (CSP, nosniff)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


def _data(obj: dict[str, Any]) -> JSONResponse:
    return JSONResponse(obj, headers=DATA_HEADERS)


def _mixture_info(name: str, cfg: MoAConfig) -> dict[str, Any]:
    return {
        "name": name,
        "description": cfg.description,
        "layers": [list(layer.agents) for layer in cfg.layers],
        "aggregator": cfg.aggregator,
        "deadline_s": cfg.deadline_s,
    }


def _deadline(run: dict[str, Any], configs: dict[str, MoAConfig]) -> tuple[float | None, str]:
    """The run's per-call deadline and where it comes from: the log ("run"), or for runs logged
    before it was recorded the served mixture's ("mixture"), else none ("unknown")."""
    if run.get("deadline_s") is not None:
        return run["deadline_s"], "run"
    cfg = configs.get(run["preset"])
    return (cfg.deadline_s, "mixture") if cfg else (None, "unknown")


def api_router(app: FastAPI) -> APIRouter:
    """The JSON endpoints of the page (`/api/...`)."""
    mixtures = app.state.mixtures
    logging_on = app.state.settings.log
    db_path = getattr(mixtures.writer.target, "path", None)  # SQLiteLog's; None: the default
    api = APIRouter(prefix="/api", dependencies=[Depends(authorized)])

    @api.get("/mixtures")
    def list_mixtures() -> JSONResponse:
        items = [_mixture_info(n, c) for n, c in mixtures.configs.items()]
        return _data({"mixtures": items, "logging": logging_on})

    @api.get("/runs")
    def list_runs(
        q: str = Query("", max_length=500),
        mixture: str = Query("", max_length=256),
        outcome: str = Query("", pattern="^(|ok|error|cancelled)$"),
        before: float | None = None,
        limit: int = Query(50, ge=1, le=500),
    ) -> JSONResponse:
        def read(db: sqlite3.Connection) -> dict[str, Any]:
            runs = browse.list_runs(
                db, q=q.strip(), mixture=mixture, outcome=outcome, before=before, limit=limit
            )
            return {"runs": runs, "mixtures": browse.logged_mixtures(db)}

        found: dict[str, Any] = browse.with_db(db_path, read, {"runs": [], "mixtures": []})
        return _data({**found, "logging": logging_on})

    def _one(run_id: str) -> dict[str, Any]:
        found = browse.with_db(db_path, lambda db: browse.get_run(db, run_id), None)
        if found is None:
            raise APIError(404, f"no logged run '{run_id[:64]}'", code="run_not_found")
        return found

    @api.get("/runs/{run_id}")
    async def get_run(run_id: str) -> JSONResponse:
        # A run that just ended may still be in the log writer's queue: wait for it.
        await mixtures.writer.flush(run_id)
        found = await run_in_threadpool(_one, run_id)
        found["deadline_s"], found["deadline_from"] = _deadline(found["run"], mixtures.configs)
        for call in found["calls"]:
            call.pop("response", None)  # fetched per call, with its prompt
        return _data(found)

    @api.get("/runs/{run_id}/calls/{call_id}")
    async def get_call(run_id: str, call_id: int) -> JSONResponse:
        await mixtures.writer.flush(run_id)
        found = await run_in_threadpool(_one, run_id)
        call = next((c for c in found["calls"] if c["id"] == call_id), None)
        if call is None:
            raise APIError(404, f"run '{run_id[:64]}' has no call {call_id}", code="call_not_found")
        cfg = mixtures.configs.get(found["run"]["preset"])
        prompt = browse.call_prompt(found["run"], found["calls"], call, cfg)
        note = browse.prompt_note(cfg, call)
        return _data({"call": call, "prompt": prompt, "prompt_note": note})

    api.add_api_route("/runs", live_run, methods=["POST"])
    return api


def install_web(app: FastAPI) -> None:
    """Serve the web app at `/` of `app` (after create_app set app.state)."""

    @app.get("/", include_in_schema=False, dependencies=[Depends(same_origin)])
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", _Static(directory=STATIC), name="static")
    app.include_router(api_router(app))


__all__ = ["install_web"]
