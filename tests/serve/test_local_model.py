"""End to end on a real model: SmolLM2-135M run in-process by llama.cpp behind `mixkit serve`."""

from __future__ import annotations

import openai
import pytest

from mixkit.moa import parse_config
from mixkit.serve import RUN_ID_HEADER
from tests.serve.helpers import ThreadServer, logged_run

SMOL = {"provider": "local", "model": "smollm2-135m", "max_tokens": 8, "n_ctx": 1024}


@pytest.mark.slow
def test_a_real_local_mixture_streams_through_the_openai_client(home):
    cfg = parse_config(
        {
            "name": "smol",
            "agents": {"smol": SMOL, "smol-agg": {**SMOL, "temperature": 0.2}},
            "layers": [{"agents": ["smol", "smol"]}],
            "aggregator": "smol-agg",
        }
    )
    with ThreadServer([cfg]) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=300)
        raw = client.chat.completions.with_raw_response.create(
            model="smol",
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
    run, calls = logged_run(home, raw.headers[RUN_ID_HEADER])
    assert run["outcome"] == "ok" and [c["outcome"] for c in calls] == ["ok"] * 3
    assert "".join(pieces) == run["answer"] and run["answer"].strip()
    # max_tokens=8 reached every agent. The local provider re-tokenizes the text to count, which
    # can differ from the generated count by a token or two, hence the slack.
    assert all(0 < c["completion_tokens"] <= 12 for c in calls), calls
    assert usage.completion_tokens == sum(c["completion_tokens"] for c in calls)
