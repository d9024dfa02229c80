"""The run browser in Chromium: search and filters, a run's timeline, a call's details, permalinks."""

from __future__ import annotations

import uuid

from tests.serve.helpers import logged_run
from tests.web.conftest import chat


def test_a_past_run_opens_as_a_timeline_with_its_failure_deadline_and_critical_path(
    page, serve, web_home
):
    question = f"timeline question {uuid.uuid4().hex[:8]}"
    response = chat(serve.base, "timeout", question)
    assert response.status_code == 200  # the hanging proposer times out; the other one answers
    run_id = response.headers["x-mixkit-run-id"]
    run, calls = logged_run(web_home, run_id)

    page.open("#/runs")
    page.one("#run-q").send_keys(question)
    page.wait(lambda _: len(page.css("#run-table tbody tr")) == 1)
    page.one("#run-table tbody tr").click()
    page.wait(lambda d: d.current_url.endswith(f"#/runs/{run_id}"))
    rows = page.wait(lambda _: page.css(".g-row.call"))

    assert [r.get_attribute("data-outcome") for r in rows] == [c["outcome"] for c in calls]
    hung = next(r for r in rows if "p2" in r.text)
    assert hung.get_attribute("data-outcome") == "error"
    assert "Timeout" in hung.find_element("css selector", ".g-error").text
    # the hanging call held layer 1 up to its deadline: it is that layer's critical call
    assert hung.get_attribute("data-critical") == "1"
    assert len(page.css(".bar.critical")) == 2  # one per layer (proposers, aggregator)
    assert page.css(".mark.deadline") and page.css(".mark.ttft")
    assert f"TTFT {run['ttft_s']:.2f} s" in page.text(".mark.ttft")

    ok_row = next(r for r in rows if "p1" in r.text)
    ok_row.click()
    detail = page.wait(
        lambda _: "completion tokens" in page.text("#call-detail") and page.one("#call-detail")
    )
    ok_call = next(c for c in calls if c["agent"] == "p1")
    assert question in detail.text  # the prompt it was sent
    assert ok_call["response"].strip() in page.text("#call-detail .answer-text")
    facts = page.text("#call-detail .facts")
    assert f"completion tokens\n{ok_call['completion_tokens']}" in facts
    # the aggregator's prompt is the synthesis over layer 1's answers (rebuilt from the log)
    page.css(".g-row.call")[-1].click()
    page.wait(lambda _: "Candidate responses (1)" in page.text("#call-detail"))


def test_a_permalink_opens_the_run_directly(page, serve, web_home):
    response = chat(serve.base, "quick", "permalink question")
    run_id = response.headers["x-mixkit-run-id"]
    logged_run(web_home, run_id)
    page.open(f"#/runs/{run_id}")
    page.wait(lambda _: len(page.css(".g-row.call")) == 3)
    assert "permalink question" in page.text("#run-head")
    link = page.one("#run-head a.permalink").get_attribute("href")
    assert link == f"{serve.base}/#/runs/{run_id}"


def test_search_and_filters_narrow_the_list(page, serve, web_home):
    marker = uuid.uuid4().hex[:10]
    ok = chat(serve.base, "quick", f"{marker} first")
    failed = chat(serve.base, "broken", f"{marker} second")
    assert ok.status_code == 200 and failed.status_code == 502
    for r in (ok, failed):
        logged_run(web_home, r.headers["x-mixkit-run-id"])

    page.open("#/runs")
    page.one("#run-q").send_keys(marker)
    page.wait(lambda _: len(_ids(page)) == 2)
    page.js(
        "const s = document.getElementById('run-outcome'); s.value = 'error';"
        "s.dispatchEvent(new Event('change'))"
    )
    page.wait(lambda _: _ids(page) == [failed.headers["x-mixkit-run-id"]])
    row = page.text("#run-table tbody tr")
    assert "broken" in row and "error" in row
    page.js(
        "const s = document.getElementById('run-outcome'); s.value = '';"
        "const m = document.getElementById('run-mixture'); m.value = 'quick';"
        "m.dispatchEvent(new Event('change'))"
    )
    page.wait(lambda _: _ids(page) == [ok.headers["x-mixkit-run-id"]])


def _ids(page) -> list[str]:
    return page.attrs("#run-table tbody tr", "data-run")
