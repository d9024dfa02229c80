"""Test support that is also a user feature: a fake OpenAI-compatible backend with chosen faults
(`python -m mixkit.testing.fake_openai`, or `FakeBackend` from Python) and the helper that starts
a server process and waits for it. mixkit's own tests and benchmarks use these; so can yours, to
test a mixture or a client of `mixkit serve` with no model and no network."""

from mixkit.testing.fake_openai import FakeBackend, FakeOpenAI, mixture_toml
from mixkit.testing.processes import free_port, http_ready, start_process, stop_process

__all__ = [
    "FakeBackend",
    "FakeOpenAI",
    "free_port",
    "http_ready",
    "mixture_toml",
    "start_process",
    "stop_process",
]
