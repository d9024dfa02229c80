"""Server settings: where to listen, who may call, and the limits that keep the server up."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from mixkit.errors import ConfigError


class ServeSettings(BaseModel):
    """Everything `mixkit serve` can be told. Limits protect the server, not the backends."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, repr=False)  # None: no auth
    max_body_bytes: int = Field(1 << 20, ge=1024)  # 413 past this
    body_timeout_s: float = Field(30.0, gt=0)  # 408 for a body that stalls (slow-loris)
    max_messages: int = Field(256, ge=1)
    max_tokens: int = Field(4096, ge=1)  # a request's max_tokens may not exceed it
    max_concurrent: int = Field(32, ge=1)  # runs at once; 429 past it (never an unbounded queue)
    grace_s: float = Field(30.0, ge=0)  # on shutdown, in-flight requests get this long to finish
    log: bool = True  # record every run in the SQLite log (`mixkit logs`)


def api_key_from_env(name: str | None) -> str | None:
    """The bearer key named by `--api-key-env`; ConfigError if that variable is unset."""
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(
            f"--api-key-env: environment variable {name} is not set (export {name}=... first, "
            "or drop --api-key-env to serve without auth)"
        )
    return key
