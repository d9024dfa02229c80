"""Typed request models of the OpenAI chat-completions API, and the response shapes we send.

Types are strict (`"max_tokens": "12"` is an error, as it is for OpenAI). Unknown fields are
ignored, as OpenAI clients send many; fields a mixture cannot honour (n > 1, logprobs, the old
`functions`) are refused rather than silently dropped. response_format, tools and tool messages
are checked by serve/tools.py and answered by the engine (moa/engine/output.py).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from mixkit.moa import Answer
from mixkit.serve.errors import APIError
from mixkit.serve.tools import check_request

StrictFloat = Annotated[float, Field(strict=True)]


class TextPart(BaseModel):
    """One part of a multi-part message; only text parts can be answered by a mixture."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """A conversation turn. `developer` is treated as `system`; an assistant turn may carry
    `tool_calls`, and a `tool` turn answers one of them (`tool_call_id`)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None

    def as_engine_message(self) -> dict[str, Any]:
        """The {role, content} dict the moa engine takes (+ tool_calls / tool_call_id)."""
        text = (
            "".join(p.text for p in self.content)
            if isinstance(self.content, list)
            else (self.content or "")
        )
        out: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": text,
        }
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """The body of POST /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    # The final aggregator samples with these when given; proposers keep their own sampling.
    temperature: StrictFloat | None = Field(None, ge=0.0, le=2.0)
    top_p: StrictFloat | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: StrictFloat | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: StrictFloat | None = Field(None, ge=-2.0, le=2.0)
    seed: StrictInt | None = None
    user: StrictStr | None = None
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt | None = Field(None, ge=1, le=1)  # one answer per run
    logprobs: Literal[False] | None = None  # a mixture's answer has no single token distribution
    functions: None = None  # the deprecated form of tools
    response_format: dict[str, Any] | None = None  # checked by serve/tools.py
    tools: list[Any] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool = True
    constrain_proposers: StrictBool = False  # mixkit: proposers answer under the schema too

    def answer_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def engine_messages(self) -> list[dict[str, Any]]:
        return [m.as_engine_message() for m in self.messages]


def _param(loc: tuple) -> str | None:
    """pydantic's loc ('messages', 0, 'role') -> OpenAI's param 'messages[0].role'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "function-after", "literal['text']"):
            continue  # union-branch names, not fields
        else:
            out += f".{part}" if out else str(part)
    return out or None


def parse_request(data: Any, *, max_messages: int, max_tokens: int) -> ChatCompletionRequest:
    """Validate a decoded JSON body; raise APIError(400) naming the first bad field."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_body")
    messages = data.get("messages")
    if isinstance(messages, list) and len(messages) > max_messages:
        raise APIError(
            400,
            f"too many messages ({len(messages)}); this server takes at most {max_messages}",
            param="messages",
            code="too_many_messages",
        )
    try:
        req = ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = _param(first["loc"])
        raise APIError(
            400, f"{param or 'body'}: {first['msg']}", param=param, code=first["type"]
        ) from None
    wanted = req.answer_max_tokens()
    if wanted is not None and wanted > max_tokens:
        field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise APIError(
            400,
            f"{field} ({wanted}) is more than this server's limit ({max_tokens})",
            param=field,
            code="out_of_range",
        )
    check_request(req)
    return req


def usage(answer: Answer) -> dict[str, int]:
    """Tokens of every call made for the run (proposers and aggregator)."""
    p, c = answer.prompt_tokens, answer.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def finish_reason(answer: Answer, max_tokens: int | None) -> str:
    """'tool_calls' for a call; 'length' when the aggregator used its whole token budget;
    else 'stop'."""
    if answer.tool_calls:
        return "tool_calls"
    final = answer.calls[-1] if answer.calls else None
    if final is None or max_tokens is None or final.completion_tokens is None:
        return "stop"
    return "length" if final.completion_tokens >= max_tokens else "stop"


def message(answer: Answer) -> dict[str, Any]:
    """The answer as an assistant message: its text, or its tool calls."""
    if answer.tool_calls:
        return {"role": "assistant", "content": None, "tool_calls": answer.tool_calls}
    if answer.reasoning:  # a program agent's program, as reasoning servers send their thinking
        return {
            "role": "assistant",
            "content": answer.answer,
            "reasoning_content": answer.reasoning,
        }
    return {"role": "assistant", "content": answer.answer}


def mixkit_extension(answer: Answer) -> dict:
    """The run's trace, in the JSON shape of `mixkit ask --json` less the answer text."""
    out = answer.to_dict()
    out.pop("answer")
    return out


def completion(model: str, answer: Answer, max_tokens: int | None, created: int) -> dict:
    """A `chat.completion` object."""
    return {
        "id": f"chatcmpl-{answer.run_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message(answer),
                "logprobs": None,
                "finish_reason": finish_reason(answer, max_tokens),
            }
        ],
        "usage": usage(answer),
        "mixkit": mixkit_extension(answer),
    }


def chunk(
    run_id: str,
    model: str,
    created: int,
    delta: dict,
    finish: str | None = None,
    *,
    mixkit: dict[str, Any] | None = None,
    usage: dict[str, int] | None = None,
) -> dict:
    """A `chat.completion.chunk` object (with the run's `mixkit` trace or `usage` when given)."""
    extra = {k: v for k, v in (("mixkit", mixkit), ("usage", usage)) if v is not None}
    return {
        "id": f"chatcmpl-{run_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


def model_card(name: str, description: str) -> dict:
    """An entry of GET /v1/models."""
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "mixkit",
        "description": description,
    }


def now() -> int:
    return int(time.time())
