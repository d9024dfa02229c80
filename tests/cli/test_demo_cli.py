"""`mixkit demo` through the real console script, in a subprocess."""

import os
import re
import subprocess
import sys
from pathlib import Path

MIXKIT = [str(Path(sys.executable).parent / "mixkit")]


def _run(*args, timeout=300):
    env = dict(os.environ, COLUMNS="120")
    return subprocess.run(
        MIXKIT + list(args), capture_output=True, text=True, timeout=timeout, env=env
    )


def test_demo_trains_and_reports_routing():
    r = _run("demo", "--steps", "100")
    assert r.returncode == 0, r.stderr
    m = re.search(r"held-out mse: MoE ([0-9.]+) vs dense ([0-9.]+)", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) < float(m.group(2))  # the claim the demo makes (see test_demo.py)
    assert "e7" in r.stdout and "cluster" in r.stdout  # the per-expert routing table


def test_demo_bad_input_is_one_clear_line_without_traceback():
    for args, needle in [
        (("--router", "bogus"), "router ('bogus') is unknown"),
        (("-k", "9"), "k (9) must be <= num_experts (8)"),
        (("--steps", "0"), "--steps (0) must be >= 1"),
    ]:
        r = _run("demo", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr.replace("\n", " ")
        assert "Traceback" not in r.stderr


def test_unknown_command_is_a_usage_error_not_a_traceback():
    r = _run("no-such-command")
    assert r.returncode == 2
    assert "No such command" in r.stderr and "Traceback" not in r.stderr
