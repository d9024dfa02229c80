"""Safe by default: markup from models and users stays text, the key guards every log read,
other origins are refused, and the page is small and self-contained."""

from __future__ import annotations

import uuid

import httpx

from tests.serve.helpers import logged_run
from tests.web.conftest import IMG, KEY, SCRIPT, api_get, chat
from tests.web.harness import Page


def _pwned(page) -> object:
    return page.js("return window.__pwned === undefined ? null : window.__pwned")


def test_markup_in_a_logged_run_is_shown_as_text(page, serve, web_home):
    question = f"<i>{uuid.uuid4().hex[:6]}</i>{SCRIPT}"
    response = chat(serve.base, "html", question)
    run_id = response.headers["x-mixkit-run-id"]
    logged_run(web_home, run_id)

    page.open("#/runs")
    page.wait(lambda _: question in page.text("#run-table tbody"))
    page.open(f"#/runs/{run_id}")
    page.wait(lambda _: question in page.text("#run-head .q"))
    for row in page.wait(lambda _: page.css(".g-row.call")):
        row.click()
        page.wait(lambda _, r=row: r.get_attribute("class").endswith("selected"))
        page.wait(lambda _: page.css("#call-detail .answer-text"))
    page.css(".g-row.call")[1].click()
    page.wait(lambda _: IMG in page.text("#call-detail .answer-text"))
    assert not page.css("#view-run img, #view-run script, #view-run b, #view-run i")
    assert _pwned(page) is None


def test_with_auth_on_nothing_is_shown_or_served_without_the_key(browser, serve_auth):
    marker = f"secret-{uuid.uuid4().hex[:8]}"
    bearer = {"Authorization": f"Bearer {KEY}"}
    response = chat(serve_auth.base, "quick", marker, headers=bearer)
    run_id = response.headers["x-mixkit-run-id"]
    logged_run(serve_auth.home, run_id)

    for path in (
        "/api/runs",
        f"/api/runs/{run_id}",
        f"/api/runs/{run_id}/calls/1",
        "/api/mixtures",
    ):
        denied = api_get(serve_auth.base, path)
        assert denied.status_code == 401 and marker not in denied.text, path
        assert (
            api_get(serve_auth.base, path, headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
    started = httpx.post(
        f"{serve_auth.base}/api/runs",
        json={"model": "quick", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert started.status_code == 401  # nor can a run be started
    assert api_get(serve_auth.base, f"/api/runs/{run_id}", headers=bearer).status_code == 200

    page = Page(browser.driver, serve_auth.base)
    page.open(f"#/runs/{run_id}")
    dialog = page.one("#key-dialog")
    page.wait(lambda _: dialog.get_attribute("open") is not None)
    assert marker not in page.driver.page_source
    page.one("#key-input").send_keys("wrong-key\n")
    page.wait(lambda _: "refused" in page.text("#key-error"))
    assert marker not in page.driver.page_source
    page.one("#key-input").send_keys(KEY + "\n")
    page.wait(lambda _: marker in page.text("#run-head"))
    assert page.js("return sessionStorage.getItem('mixkit.apiKey')") == KEY
    page.driver.get(f"{serve_auth.base}/#/")  # the playground runs with the same key
    page.ask("quick", "with the key")
    page.wait(lambda _: page.text("#live .run-head .badge") == "ok")
    page.js("sessionStorage.clear()")


def test_other_origins_and_host_names_are_refused(serve):
    runs = f"{serve.base}/api/runs"
    assert httpx.get(runs, timeout=10).status_code == 200
    assert httpx.get(runs, headers={"Origin": serve.base}, timeout=10).status_code == 200
    for headers in (
        {"Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "evil.example"},  # DNS rebinding: a hostile name resolving to 127.0.0.1
    ):
        refused = httpx.get(runs, headers=headers, timeout=10)
        assert refused.status_code == 403 and refused.json()["error"]["code"], headers

    form = httpx.post(
        runs, content=b'{"model": "quick"}', headers={"Content-Type": "text/plain"}, timeout=10
    )
    assert form.status_code == 415  # a cross-site form cannot send JSON without a preflight
    assert "access-control-allow-origin" not in {k.lower() for k in form.headers}


def test_the_page_is_small_and_loads_nothing_from_other_hosts(page, serve):
    page.open("#/")
    page.wait(lambda _: page.css("#mixture option"))
    entries = page.js(
        "return performance.getEntriesByType('navigation').concat("
        "performance.getEntriesByType('resource')).map(e => [e.name, Math.max(e.transferSize, e.encodedBodySize)])"
    )
    assert all(name.startswith(serve.base + "/") for name, _ in entries), entries
    total = sum(size for _, size in entries)
    assert 0 < total < 200_000, entries
    csp = httpx.get(serve.base + "/", timeout=10).headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
