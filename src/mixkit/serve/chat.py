"""POST /v1/chat/completions: one request = one MoA run, streamed (SSE) or whole.

A streamed run waits for its first token before it answers 200, so a run that fails in its
proposer layers still gets a real status (502/504); a failure after that ends the stream with an
OpenAI-shaped error event. The run id goes back in `x-mixkit-run-id`, also on errors.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mixkit.serve import schemas
from mixkit.serve.errors import APIError
from mixkit.serve.limits import RunLimiter, read_body
from mixkit.serve.mixtures import Mixtures
from mixkit.serve.request import check_auth, decode_json
from mixkit.serve.runs import ClientGone, Run, until_disconnect
from mixkit.serve.settings import ServeSettings
from mixkit.serve.streaming import SSEResponse, chunks

RUN_ID_HEADER = "x-mixkit-run-id"
GATE_HEADER = "x-mixkit-gate"  # a gated run's decision, e.g. "alone; chosen=qwen"


async def chat_completion(
    request: Request, mixtures: Mixtures, settings: ServeSettings, limiter: RunLimiter
) -> Response:
    """Answer one chat-completions request (auth, limits, the run, its response)."""
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
    if (gate := run.gate_header()) is not None:  # decided before the first token
        headers[GATE_HEADER] = gate
    if not req.stream:
        await finish()
        body = schemas.completion(req.model, answer, run.effective_max_tokens, schemas.now())
        return JSONResponse(body, headers=headers)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return SSEResponse(chunks(run, first, include_usage), finish, headers=headers)
