"""Fuzz: 1000+ generated malformed, mistyped, out-of-range and oversized requests.

Every generated request is invalid by construction, so each must get a 4xx with an OpenAI-shaped
JSON error (never a 5xx, never a run), and the server must be healthy and serving afterwards.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixkit.serve import ServeSettings
from tests.serve.helpers import ThreadServer, mixture

MAX_BODY, MAX_MESSAGES, MAX_TOKENS = 4096, 4, 64
BATCH, EXAMPLES = 5, 210  # 1050 requests
KNOWN_MODELS = {"mix"}
GOOD = {"model": "mix", "messages": [{"role": "user", "content": "hi"}]}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
not_none = values.filter(lambda v: v is not None)


def outside_int(lo: int, hi: int):
    """Anything that is not an int in [lo, hi] (and not None, which means 'unset')."""
    out_of_range = st.integers(max_value=lo - 1) | st.integers(min_value=hi + 1)
    wrong_type = not_none.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))
    return out_of_range | wrong_type


def outside_float(lo: float, hi: float):
    out_of_range = st.floats(max_value=lo, exclude_max=True) | st.floats(
        min_value=hi, exclude_min=True
    )
    wrong_type = not_none.filter(lambda v: not isinstance(v, int | float) or isinstance(v, bool))
    return out_of_range | wrong_type


good_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)}
)
bad_message = st.one_of(
    not_none.filter(lambda v: not isinstance(v, dict)),
    st.fixed_dictionaries({"content": st.text(max_size=10)}),  # no role
    st.fixed_dictionaries(
        {
            "role": st.text(max_size=12).filter(
                lambda r: r not in ("system", "developer", "user", "assistant")
            ),
            "content": st.text(max_size=10),
        }
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": not_none.filter(lambda v: not isinstance(v, str | list)),
        }
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": st.lists(
                not_none.filter(lambda v: not isinstance(v, dict)), min_size=1, max_size=3
            ),
        }
    ),
)
bad_messages = st.one_of(
    not_none.filter(lambda v: not isinstance(v, list)),
    st.just([]),
    st.lists(good_message, max_size=3).flatmap(
        lambda head: bad_message.map(lambda bad: [*head, bad, {"role": "user", "content": "q"}])
    ),
    st.lists(good_message, min_size=MAX_MESSAGES, max_size=MAX_MESSAGES).map(
        lambda ms: [*ms, {"role": "user", "content": "one too many"}]
    ),
    st.lists(good_message, max_size=2).map(lambda ms: [*ms, {"role": "assistant", "content": "x"}]),
)
mutations = st.one_of(
    st.tuples(st.just("model"), not_none.filter(lambda v: not isinstance(v, str))),
    st.tuples(st.just("model"), st.text(max_size=30).filter(lambda m: m not in KNOWN_MODELS)),
    st.tuples(st.just("messages"), bad_messages),
    st.tuples(st.just("stream"), not_none.filter(lambda v: not isinstance(v, bool))),
    st.tuples(st.just("max_tokens"), outside_int(1, MAX_TOKENS)),
    st.tuples(st.just("max_completion_tokens"), outside_int(1, MAX_TOKENS)),
    st.tuples(st.just("temperature"), outside_float(0.0, 2.0)),
    st.tuples(st.just("top_p"), outside_float(0.0, 1.0)),
    st.tuples(st.just("n"), outside_int(1, 1)),
    st.tuples(st.just("tools"), not_none),
    st.tuples(st.just("logprobs"), not_none.filter(lambda v: v is not False)),
    st.tuples(st.just("stream_options"), not_none.filter(lambda v: not isinstance(v, dict))),
    st.tuples(
        st.just("stream_options"),
        st.fixed_dictionaries(
            {"include_usage": not_none.filter(lambda v: not isinstance(v, bool))}
        ),
    ),
    st.tuples(
        st.just("response_format"),
        st.fixed_dictionaries({"type": st.text(max_size=10).filter(lambda t: t != "text")}),
    ),
)


def mutated(field_value, extra: dict, drop: bool) -> bytes:
    field, value = field_value
    body = {**GOOD, **extra}
    if drop and field in ("model", "messages"):
        body.pop(field)
    else:
        body[field] = value
    return json.dumps(body).encode()


def not_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
        return False
    except (ValueError, RecursionError):
        return True


requests = st.one_of(
    # a valid request with one field wrong (extra harmless fields around it)
    st.builds(
        mutated,
        mutations,
        st.dictionaries(
            st.sampled_from(["user", "seed", "stop", "x_extra"]), st.text(max_size=5), max_size=2
        ),
        st.booleans(),
    ),
    # JSON that is not an object, and bytes that are not JSON at all
    values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300).filter(not_json),
    st.integers(1, len(json.dumps(GOOD)) - 1).map(lambda k: json.dumps(GOOD).encode()[:k]),
    # an object missing what it needs
    st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in ("model", "messages")), values, max_size=5
    ).map(lambda d: json.dumps(d).encode()),
    # oversized bodies (a valid request padded past the limit)
    st.integers(MAX_BODY + 1, 6 * MAX_BODY).map(
        lambda n: json.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * n}]}).encode()
    ),
)


@pytest.fixture(scope="module")
def target(backend):
    settings_ = ServeSettings(
        max_body_bytes=MAX_BODY, max_messages=MAX_MESSAGES, max_tokens=MAX_TOKENS
    )
    with ThreadServer([mixture("mix", backend.url, ["ok"], "ok")], settings_) as s:
        yield s


def test_fuzzed_requests_get_4xx_openai_errors_and_the_server_survives(target):
    statuses: list[int] = []
    with httpx.Client(base_url=target.url, timeout=30) as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,  # the same 1000+ requests every run
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(requests, min_size=BATCH, max_size=BATCH))
        def check(bodies: list[bytes]) -> None:
            for body in bodies:
                r = client.post(
                    "/chat/completions", content=body, headers={"content-type": "application/json"}
                )
                statuses.append(r.status_code)
                assert 400 <= r.status_code < 500, (r.status_code, body[:200], r.text[:300])
                error = r.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, r.text[:300]
                assert isinstance(error["message"], str) and error["message"]

        check()
        assert len(statuses) >= 1000
        assert {400, 404, 413} <= set(statuses)  # the generator reaches every kind of refusal
        # still healthy, nothing left running, and a good request is served
        assert target.health() == {**target.health(), "status": "ok", "running": 0}
        ok = client.post("/chat/completions", json=GOOD)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
