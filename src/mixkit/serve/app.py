"""The FastAPI app: OpenAI's chat-completions and models endpoints over the moa engine.

    POST /v1/chat/completions   a mixture answers; `stream: true` sends SSE chunks as they come
    GET  /v1/models             the mixtures (presets + configs); GET /v1/models/{id} one of them
    GET  /health                status, runs in flight, the concurrency limit (no auth)
    GET  /, /api/...            the web app: playground and run browser (serve/web/)

Every error is OpenAI-shaped JSON (errors.py). The run id goes back in `x-mixkit-run-id`, so
`mixkit logs --run ID` shows the run's layers and calls.
"""

from __future__ import annotations

import hmac
import json
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from mixkit.serve import schemas
from mixkit.serve.errors import APIError, install_handlers
from mixkit.serve.limits import RunLimiter, read_body
from mixkit.serve.mixtures import Mixtures
from mixkit.serve.runs import ClientGone, Run, until_disconnect
from mixkit.serve.settings import ServeSettings
from mixkit.serve.streaming import SSEResponse, chunks
from mixkit.serve.web import install_web

RUN_ID_HEADER = "x-mixkit-run-id"


def check_auth(request: Request, api_key: str | None) -> None:
    """401 unless the request carries `Authorization: Bearer <api_key>` (when a key is set)."""
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    ):
        raise APIError(
            401,
            "missing or wrong API key (send 'Authorization: Bearer <key>'; the key is the value "
            "of the environment variable given to mixkit serve --api-key-env)",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def decode_json(raw: bytes) -> object:
    """The body as JSON, or a 400 saying why not."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise APIError(
            400, f"the body is not valid JSON ({e})"[:300], code="invalid_json"
        ) from None


def create_app(mixtures: Mixtures | None = None, settings: ServeSettings | None = None) -> FastAPI:
    """The server as an ASGI app (run it with uvicorn, or `mixkit serve`)."""
    settings = settings or ServeSettings()
    mixtures = mixtures or Mixtures([], log=settings.log)
    limiter = RunLimiter(settings.max_concurrent)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
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
        check_auth(request, settings.api_key)
        raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        data = decode_json(raw)
        req = schemas.parse_request(
            data, max_messages=settings.max_messages, max_tokens=settings.max_tokens
        )
        moa = mixtures.get(req.model)
        limiter.acquire()
        try:
            run = Run(moa, req, mixtures.writer)
        except BaseException:
            limiter.release()
            raise
        headers = {RUN_ID_HEADER: run.run_id}

        async def finish() -> None:
            await run.close()
            limiter.release()

        try:
            if req.stream:
                # Wait for the first token before sending 200, so a run that fails in its
                # proposer layers still gets a real status (502/504), not an error event.
                first = await until_disconnect(request.receive, run.next_piece())
            else:
                answer = await until_disconnect(request.receive, run.collect())
        except ClientGone:
            await finish()
            return Response(status_code=499)  # nobody is listening; for the access log only
        except BaseException as e:
            await finish()
            if isinstance(e, APIError):  # a failed run is logged too: say which
                e.headers[RUN_ID_HEADER] = run.run_id
            raise
        if not req.stream:
            await finish()
            body = schemas.completion(req.model, answer, run.effective_max_tokens, schemas.now())
            return JSONResponse(body, headers=headers)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return SSEResponse(chunks(run, first or "", include_usage), finish, headers=headers)

    install_web(app)
    return app
