"""Fixtures for the server tests: a fake OpenAI backend process, servers on free ports, a log home."""

from __future__ import annotations

import os

import pytest

from mixkit.serve import ServeSettings
from mixkit.testing import FakeBackend
from tests.serve.helpers import ThreadServer, mixture


@pytest.fixture(scope="session")
def home(tmp_path_factory):
    """MIXKIT_HOME for every server test, so runs are logged there and never in ~/.mixkit."""
    path = tmp_path_factory.mktemp("mixkit-home")
    before = os.environ.get("MIXKIT_HOME")
    os.environ["MIXKIT_HOME"] = str(path)
    yield path
    if before is None:
        os.environ.pop("MIXKIT_HOME", None)
    else:
        os.environ["MIXKIT_HOME"] = before


@pytest.fixture(scope="session")
def backend(home):
    """A fake OpenAI-compatible backend process (ttft 10 ms, 8 words 2 ms apart)."""
    with FakeBackend(ttft=0.01, gap=0.002, tokens=8) as b:
        yield b


@pytest.fixture
def fresh_backend(backend):
    """The shared backend with its counters zeroed and its gate closed (opened again after)."""
    backend.reset()
    yield backend
    backend.release()


@pytest.fixture(scope="module")
def server(backend):
    """A server (no auth, default limits) with a few mixtures over the fake backend."""
    configs = [
        mixture("mix", backend.url, ["ok", "ok"], "ok"),
        mixture("gated-mix", backend.url, ["ok"], "gated"),
        mixture("slow-mix", backend.url, ["ok"], "slow"),
        mixture("hang-mix", backend.url, ["hang", "hang"], "ok", deadline_s=60),
        mixture("fail-mix", backend.url, ["fail", "fail"], "ok", retries=0),
        mixture("agg-fail-mix", backend.url, ["ok"], "fail", retries=0),
        mixture("cut-mix", backend.url, ["ok"], "cut", retries=0),
        mixture("timeout-mix", backend.url, ["hang"], "ok", deadline_s=0.5),
        mixture("sampling-mix", backend.url, ["ok"], "agg-ok"),
    ]
    with ThreadServer(configs, ServeSettings(max_concurrent=64)) as s:
        yield s
