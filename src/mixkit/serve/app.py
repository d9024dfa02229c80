"""The FastAPI app: OpenAI's chat-completions and models endpoints over the moa engine.

    POST /v1/chat/completions   a mixture answers; `stream: true` sends SSE chunks as they come
    GET  /v1/models             the mixtures (presets + configs); GET /v1/models/{id} one of them
    GET  /health                status, runs in flight, the concurrency limit (no auth)
    GET  /, /api/...            the web app: playground and run browser (serve/web/)

Every error is OpenAI-shaped JSON (errors.py). The run id goes back in `x-mixkit-run-id`, so
`mixkit logs --run ID` shows the run's layers and calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from mixkit.serve import schemas
from mixkit.serve.chat import RUN_ID_HEADER, chat_completion
from mixkit.serve.errors import install_handlers
from mixkit.serve.limits import RunLimiter
from mixkit.serve.mixtures import Mixtures
from mixkit.serve.request import check_auth, decode_json
from mixkit.serve.settings import ServeSettings
from mixkit.serve.web import install_web

__all__ = ["RUN_ID_HEADER", "check_auth", "create_app", "decode_json"]


def create_app(mixtures: Mixtures | None = None, settings: ServeSettings | None = None) -> FastAPI:
    """The server as an ASGI app (run it with uvicorn, or `mixkit serve`)."""
    settings = settings or ServeSettings()
    mixtures = mixtures or Mixtures([], log=settings.log)
    limiter = RunLimiter(settings.max_concurrent)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        mixtures.writer.close()  # after the graceful shutdown: the last runs' logs are written

    app = FastAPI(
        title="mixkit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.settings, app.state.mixtures, app.state.limiter = settings, mixtures, limiter
    install_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "running": limiter.running,
            "max_concurrent": limiter.limit,
            "models": len(mixtures.names()),
        }

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        check_auth(request, settings.api_key)
        cards = [schemas.model_card(n, c.description) for n, c in mixtures.configs.items()]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict:
        check_auth(request, settings.api_key)
        mixtures.get(name)  # 404 if unknown
        return schemas.model_card(name, mixtures.configs[name].description)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await chat_completion(request, mixtures, settings, limiter)

    install_web(app)
    return app
