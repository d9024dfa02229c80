"""What every API request goes through first: the bearer key check and JSON decoding."""

from __future__ import annotations

import hmac
import json

from fastapi import Request

from mixkit.serve.errors import APIError


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
