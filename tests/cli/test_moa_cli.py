"""`mixkit ask | logs | eval` as a user runs them: the real entry point in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mixkit.testing import FakeBackend


@pytest.fixture(scope="module")
def server():
    with FakeBackend(ttft=0.0, gap=0.0) as s:
        yield s


@pytest.fixture
def home(tmp_path):
    return tmp_path


def mixkit(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIXKIT_HOME": str(home), "COLUMNS": "200"}
    cmd = [sys.executable, "-c", "from mixkit.cli import main; main()", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, url: str, proposers: list[str], aggregator: str, **top) -> Path:
    lines = ['aggregator = "agg"'] + [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    names = []
    for i, model in enumerate([*proposers, aggregator]):
        name = "agg" if i == len(proposers) else f"p{i}"
        names.append(name)
        lines += [
            f"[agents.{name}]",
            'provider = "openai"',
            f'base_url = "{url}"',
            f"model = {json.dumps(model)}",
            "max_tokens = 16",
        ]
    lines += ["[[layers]]", f"agents = {json.dumps(names[:-1])}", "min_answers = 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ask_json_has_answer_and_trace(server, home, tmp_path):
    tag = uuid.uuid4().hex[:8]
    cfg = write_config(
        tmp_path / "c.toml",
        server.url,
        [f"ok:one {tag}", f"fail500:{tag}"],
        f"ok:final {tag}",
        retries=0,
    )
    out = mixkit(home, "ask", f"question {tag}", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["answer"] == f"final {tag}"  # the server's scripted text, passed through
    trace = result["trace"]
    assert [(c["layer"], c["agent"]) for c in trace] == [(1, "p0"), (1, "p1"), (2, "agg")]
    for c in trace:
        assert {
            "layer",
            "agent",
            "latency_s",
            "ttft_s",
            "prompt_tokens",
            "completion_tokens",
            "error",
        } <= set(c)
    assert trace[0]["error"] is None and "500" in trace[1]["error"] and trace[2]["error"] is None


def test_ask_streams_then_summarizes_and_logs_show_it(server, home, tmp_path):
    tag = uuid.uuid4().hex[:8]
    cfg = write_config(
        tmp_path / "c.toml", server.url, [f"ok:one {tag}"], f"ok:streamed answer {tag}"
    )
    out = mixkit(home, "ask", "q?", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"streamed answer {tag}"  # stdout holds only the answer
    assert "critical path" in out.stderr and "layer 1: 1/1" in out.stderr
    logs = mixkit(home, "logs", "-n", "1")
    assert (
        logs.returncode == 0
        and "critical path" in logs.stdout
        and f"streamed answer {tag}" in logs.stdout
    )
    (run,) = json.loads(mixkit(home, "logs", "-n", "1", "--json").stdout)
    assert run["outcome"] == "ok" and [c["layer"] for c in run["calls"]] == [1, 2]


def test_continue_sends_the_previous_turn(server, home, tmp_path):
    tag = uuid.uuid4().hex[:8]
    cfg = write_config(tmp_path / "c.toml", server.url, [f"ok:p {tag}"], f"ok:agg {tag}")
    assert mixkit(home, "ask", f"first {tag}", "--config", str(cfg)).returncode == 0
    assert mixkit(home, "ask", f"second {tag}", "--config", str(cfg), "--continue").returncode == 0
    last = server.bodies(f"ok:p {tag}")[-1]["messages"]
    assert [m["content"] for m in last[-3:]] == [f"first {tag}", f"agg {tag}", f"second {tag}"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["ask", "q", "--preset", "nope"], "unknown preset 'nope'"),
        (["ask", "q", "--config", "/no/such.toml"], "config file not found"),
        (["ask", "q", "--preset", "moa", "--config", "x.toml"], "not both"),
        (
            ["eval", "--preset", "moa-tiny", "--task", "no_such_task", "--n", "1"],
            "reasoning-gym task",
        ),
    ],
)
def test_user_mistakes_are_one_line_errors(home, args, words):
    out = mixkit(home, *args)
    assert out.returncode == 2
    assert words in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2


def test_failed_run_names_the_agents_and_exits_2(server, home, tmp_path):
    tag = uuid.uuid4().hex[:8]
    cfg = write_config(
        tmp_path / "c.toml",
        server.url,
        [f"fail500:{tag}", f"empty:{tag}"],
        f"ok:x {tag}",
        retries=0,
    )
    out = mixkit(home, "ask", "q", "--config", str(cfg))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "0 of 2 agents answered" in out.stderr and "p0:" in out.stderr and "p1:" in out.stderr


def test_eval_scores_the_moa_and_each_agent(home, tmp_path):
    cfg = tmp_path / "smol.toml"
    cfg.write_text(
        'aggregator = "s"\n[agents.s]\nprovider = "local"\nmodel = "smollm2-135m"\nn_ctx = 1024\n'
        '[[layers]]\nagents = ["s", "s"]\n'
    )
    out = mixkit(
        home,
        "eval",
        "--config",
        str(cfg),
        "--task",
        "basic_arithmetic",
        "--n",
        "2",
        "--max-tokens",
        "8",
        "--json",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["task"] == "basic_arithmetic" and result["max_tokens"] == 8
    moa, single = result["scores"]
    assert moa["system"].startswith("moa:") and single["system"].startswith("single:s")
    assert moa["n"] == single["n"] == 2
    assert moa["calls"] == 2 * 3 and single["calls"] == 2 * 1
    for s in (moa, single):
        assert 0.0 <= s["accuracy"] <= 1.0 and s["completion_tokens"] <= s["calls"] * 8


def test_eval_scores_the_moa_and_each_agent_on_a_tasks_file_and_several_tasks(home, tmp_path):
    """Without --strategies, a tasks file (and several -t) work as one -t does: a table of the
    mixture and each of its agents per task; --json gives one result per task."""
    cfg = tmp_path / "smol.toml"
    cfg.write_text(
        'aggregator = "s"\n[agents.s]\nprovider = "local"\nmodel = "smollm2-135m"\nn_ctx = 1024\n'
        '[[layers]]\nagents = ["s", "s"]\n'
    )
    tasks = tmp_path / "my-set.jsonl"
    lines = [
        {"question": "What is 2 + 3?", "expected": "5", "scorer": "number"},
        {"question": "Spell cat backwards.", "expected": "tac", "scorer": "exact"},
        {"question": "What is 10 - 4?", "expected": "6", "scorer": "number"},
    ]
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    base = (
        "eval",
        "--config",
        str(cfg),
        "--tasks-file",
        str(tasks),
        "-n",
        "2",
        "--max-tokens",
        "4",
    )
    out = mixkit(home, *base, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{tasks}, n=2, max_tokens=4" in out.stdout
    assert "moa:smol" in out.stdout and "single:s (smollm2-135m" in out.stdout

    out = mixkit(home, *base, "-t", "basic_arithmetic", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    from_file, arithmetic = json.loads(out.stdout)
    assert (from_file["task"], from_file["source"]) == ("my-set", str(tasks))
    assert (arithmetic["task"], arithmetic["source"]) == ("basic_arithmetic", "reasoning-gym")
    for result in (from_file, arithmetic):
        moa, single = result["scores"]
        assert moa["system"] == "moa:smol" and single["system"].startswith("single:s")
        assert moa["n"] == single["n"] == 2 and moa["calls"] == 2 * 3 and single["calls"] == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["--tasks-file", "BAD"], "my-set.jsonl:2: missing expected"),
        (["--tasks-file", "BAD", "-t", "basic_arithmetic"], "my-set.jsonl:2: missing expected"),
        (["-t", "basic_arithmetic", "--samples", "2"], "--samples and --plot need --strategies"),
        (["--strategies", "nope", "-t", "basic_arithmetic"], "unknown strategy 'nope'"),
    ],
)
def test_eval_mistakes_without_strategies_exit_2_naming_them(home, tmp_path, args, words):
    bad = tmp_path / "my-set.jsonl"
    bad.write_text('{"question": "What is 2 + 3?", "expected": "5", "scorer": "number"}\n'
                   '{"question": "What is 1 + 1?", "scorer": "number"}\n')  # fmt: skip
    out = mixkit(home, "eval", "-p", "moa-tiny", *[str(bad) if a == "BAD" else a for a in args])
    assert out.returncode == 2, out.stderr
    assert words in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2


def test_readme_moa_section_matches_the_cli(home):
    """Every preset is documented, and every flag the README shows exists in `--help`."""
    import re

    from mixkit.moa import list_presets

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Mixture-of-Agents", 1)[1].split("\n## ", 1)[0]
    for preset in list_presets():
        assert preset in section
    examples = [line.split("#")[0] for line in section.splitlines() if line.startswith("mixkit ")]
    assert {line.split()[1] for line in examples} == {"ask", "logs", "eval", "gate"}
    helps: dict[str, str] = {}
    for line in examples:
        words = line.split()
        command = " ".join(words[1:3] if words[1] == "gate" else words[1:2])  # `gate` has verbs
        if command not in helps:
            helps[command] = mixkit(home, *command.split(), "--help").stdout
        for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", line):
            assert flag in helps[command], f"README shows {flag} for `mixkit {command}`"
