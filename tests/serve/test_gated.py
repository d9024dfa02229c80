"""A gated mixture behind `mixkit serve`: the gate's choice reaches the client and the log."""

from __future__ import annotations

import json

import httpx

from mixkit.moa.gate import model as g
from mixkit.serve import RUN_ID_HEADER, ServeSettings
from tests.serve.helpers import ThreadServer, logged_run, mixture


def test_a_served_gated_run_reports_the_gates_choice(backend, home, tmp_path):
    calls = []
    for i in range(30):  # `p-ok` is always right, `p-fail` never: the gate sends all to p-ok
        prompt = f"served question {i}"
        calls += [g.ScoredCall(prompt, "p-ok", 1.0, "a", "t", 10, 5),
                  g.ScoredCall(prompt, "p-fail", 0.0, "b", "t", 10, 5)]  # fmt: skip
    gate_file = tmp_path / "gate.json"
    g.train(calls).save(gate_file)
    cfg = mixture("gated", backend.url, ["ok", "fail"], "ok", gate={"path": str(gate_file), "k": 2})
    with ThreadServer([cfg], ServeSettings()) as server:
        body = {"model": "gated", "stream": True,
                "messages": [{"role": "user", "content": "served question 99"}]}  # fmt: skip
        with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            run_id = r.headers[RUN_ID_HEADER]
            gate_header = r.headers.get("x-mixkit-gate")  # sent with the status, before the answer
            chunks = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]  # fmt: skip
        # not streamed: the same header on the whole answer
        whole = httpx.post(f"{server.url}/chat/completions", json={**body, "stream": False},
                           timeout=30)  # fmt: skip
        assert whole.status_code == 200 and whole.headers["x-mixkit-gate"] == "alone; chosen=p-ok"
    extra = next(c["mixkit"] for c in reversed(chunks) if "mixkit" in c)
    assert extra["gate"]["strategy"] == "alone" and extra["gate"]["chosen"] == ["p-ok"]
    assert extra["gate"]["skipped"] == ["p-fail"] and extra["gate"]["scores"]["p-ok"] > 0.5
    assert gate_header == "alone; chosen=p-ok"
    assert [c["agent"] for c in extra["trace"]] == ["p-ok"]  # one call: no proposers, no aggregator
    run, logged_calls = logged_run(home, run_id)
    assert json.loads(run["gate_json"]) == extra["gate"] and len(logged_calls) == 1
