"""`mixkit demo` through the real console script, in a subprocess (all but two input mistakes,
which fail before any training and go through the same entry point in process)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.in_process import run_in_process

MIXKIT = [str(Path(sys.executable).parent / "mixkit")]


def _run(*args, timeout=300):
    env = dict(os.environ, COLUMNS="120")
    return subprocess.run(
        MIXKIT + list(args), capture_output=True, text=True, timeout=timeout, env=env
    )


def _in_process(*args):
    return run_in_process(*args, env={"COLUMNS": "120"})


def test_demo_trains_and_reports_routing():
    r = _run("demo", "--steps", "100")
    assert r.returncode == 0, r.stderr
    m = re.search(r"held-out mse: MoE ([0-9.]+) vs dense ([0-9.]+)", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) < float(m.group(2))  # the claim the demo makes (see test_demo.py)
    assert "e7" in r.stdout and "cluster" in r.stdout  # the per-expert routing table


def test_demo_bad_input_is_one_clear_line_without_traceback():
    # the first through the console script in a subprocess, the rest through its entry point in
    # process (the same main(); tests/in_process.py)
    for args, needle, run in [
        (("--router", "bogus"), "router ('bogus') is unknown", _run),
        (("-k", "9"), "k (9) must be <= num_experts (8)", _in_process),
        (("--steps", "0"), "--steps (0) must be >= 1", _in_process),
    ]:
        r = run("demo", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr.replace("\n", " ")
        assert "Traceback" not in r.stderr


def test_unknown_command_is_a_usage_error_not_a_traceback():
    r = _run("no-such-command")
    assert r.returncode == 2
    assert "No such command" in r.stderr and "Traceback" not in r.stderr
