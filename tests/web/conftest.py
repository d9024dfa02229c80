"""Fixtures for the browser tests: a fake backend, a real `mixkit serve`, one headless Chromium.

Without Chromium the tests that use a browser skip, naming the Debian packages to install; CI sets
MIXKIT_REQUIRE_BROWSER=1 (in .ci/run), where a missing browser fails them instead.
The README's screenshots come from the same tooling: `python -m tests.web.screenshots`.
"""

from __future__ import annotations

import os

import httpx
import pytest

from mixkit.testing import FakeBackend
from tests.serve.helpers import ServerProcess, wait_for
from tests.web.harness import Browser, Page, missing_reason, mixture_toml, write_mixtures

KEY = "web-test-key-0123"


@pytest.fixture(scope="session")
def browser_available():
    reason = missing_reason()
    if reason and os.environ.get("MIXKIT_REQUIRE_BROWSER"):
        pytest.fail(f"browser tests required (MIXKIT_REQUIRE_BROWSER) but {reason}")
    if reason:
        pytest.skip(f"browser tests skipped: {reason}")


@pytest.fixture(scope="session")
def web_home(tmp_path_factory):
    return tmp_path_factory.mktemp("web-home")


@pytest.fixture(scope="session")
def fake(web_home):
    """The fake OpenAI backend: 8 words, 10 ms apart, per answer."""
    with FakeBackend(ttft=0.01, gap=0.01, tokens=8) as backend:
        yield backend


SCRIPT = "<script>window.__pwned=1</script>"
IMG = '<img src=x onerror="window.__pwned=2">'


def mixtures(url: str) -> dict[str, tuple]:
    return {
        "quick": (["ok", "ok"], "ok", {}),
        "gated": (["ok", "ok"], "gated", {}),
        "slow": (["slow", "ok"], "ok", {}),
        "html": ([f"ok:{SCRIPT}tail", f"ok:{IMG}"], f"ok:<b>bold</b>{SCRIPT}", {}),
        "timeout": (["ok", "hang"], "ok", {"deadline_s": 1.5, "retries": 0}),
        "broken": (["fail", "fail"], "ok", {"retries": 0}),
        "flaky": (["cut", "ok"], "ok", {"retries": 1}),
    }


def gated_toml(url: str, name: str = "gated-fake", extra: str = "") -> str:
    """A gated mixture (the packaged gate `costumes`) over fake agents: 5 candidate slots, the
    gate consults at most 2, an aggregator synthesizes what they said (`extra`: more TOML)."""
    agents = "".join(
        f'[agents.{agent}]\nprovider = "openai"\nbase_url = "{url}"\nmodel = "ok"\n'
        for agent in ("qwen", "qwen-careful", "smollm", "agg")
    )
    return (
        f'name = "{name}"\naggregator = "agg"\n'
        '[gate]\npath = "costumes"\nk = 2\ncombine = "synthesize"\n'
        + extra
        + agents
        + '[[layers]]\nagents = ["qwen", "qwen", "qwen", "qwen-careful", "smollm"]\n'
    )


@pytest.fixture(scope="session")
def serve(web_home, fake):
    """`mixkit serve` (no auth) with the mixtures above, logging under web_home."""
    configs = write_mixtures(web_home, fake.url, mixtures(fake.url))
    (web_home / "gated-fake.toml").write_text(gated_toml(fake.url))
    early = gated_toml(fake.url, "gated-early", "[early_exit]\nmin_agree = 2\n")
    (web_home / "gated-early.toml").write_text(early)
    configs += [web_home / "gated-fake.toml", web_home / "gated-early.toml"]
    stairs = mixture_toml("stairs", fake.url, ["ok", "ok"], "ok") + "[staircase]\n"
    (web_home / "stairs.toml").write_text(stairs)
    configs.append(web_home / "stairs.toml")
    with ServerProcess(web_home, configs) as server:
        yield server


@pytest.fixture(scope="session")
def serve_auth(tmp_path_factory, fake):
    """`mixkit serve --api-key-env` with one mixture and its own log."""
    home = tmp_path_factory.mktemp("web-auth-home")
    configs = write_mixtures(home, fake.url, {"quick": (["ok"], "ok", {})})
    os.environ["MIXKIT_WEB_TEST_KEY"] = KEY
    with ServerProcess(home, configs, "--api-key-env", "MIXKIT_WEB_TEST_KEY") as server:
        yield server


@pytest.fixture(scope="session")
def browser(browser_available):
    b = Browser()
    yield b
    b.close()


@pytest.fixture
def page(browser, serve):
    """The browser on a fresh load of the app (`page.open('#/runs')`)."""
    return Page(browser.driver, serve.base)


def api_get(base: str, path: str, **kwargs) -> httpx.Response:
    return httpx.get(f"{base}{path}", timeout=10, **kwargs)


def chat(base: str, mixture: str, question: str, **kwargs) -> httpx.Response:
    """A run through the OpenAI-compatible endpoint (how most runs reach the log)."""
    body = {"model": mixture, "messages": [{"role": "user", "content": question}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30, **kwargs)


__all__ = ["KEY", "Page", "api_get", "chat", "wait_for"]
