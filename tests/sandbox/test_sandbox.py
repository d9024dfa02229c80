"""The sandbox's API: results of ordinary programs, refusals, limits, and the rlimits-only mode."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from mixkit.errors import ConfigError
from mixkit.sandbox import MODES, Limits, Sandbox, SandboxUnavailable

from .conftest import leftovers, marked, sandbox_or_skip


def test_a_program_prints_its_answer(ns_sandbox: Sandbox):
    result = asyncio.run(ns_sandbox.run_python("print(6 * 7)\nprint('héllo ✓')\n"))
    assert result.status == "ok" and result.ok, result
    assert result.stdout == "42\nhéllo ✓\n" and result.stderr == ""
    assert result.exit_code == 0 and result.error_summary() == ""
    assert result.mode == ns_sandbox.check() and result.limits == Limits()


def test_a_result_is_json_ready(ns_sandbox: Sandbox):
    result = ns_sandbox.run_python_sync("print(1)", Limits(wall_s=2))
    table = json.loads(json.dumps(result.as_dict()))
    assert table["status"] == "ok" and table["stdout"] == "1\n" and table["limits"]["wall_s"] == 2


def test_the_sandbox_imports_neither_torch_nor_moa():
    code = "import sys, mixkit.sandbox; print(sorted(m for m in sys.modules if m.startswith(('torch', 'mixkit.moa'))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"


def test_an_exception_is_an_error_with_the_end_of_its_traceback(ns_sandbox: Sandbox):
    code = "def f(x):\n    return x / 0\n\nprint('before')\nf(1)\n"
    result = ns_sandbox.run_python_sync(code)
    assert result.status == "error" and result.exit_code == 1, result
    assert result.stdout == "before\n"
    summary = result.error_summary()
    assert summary.endswith("ZeroDivisionError: division by zero"), summary
    assert "line 2, in f" in summary and "return x / 0" in summary
    assert "Traceback" in result.stderr  # the whole of it is still there
    syntax = ns_sandbox.run_python_sync("x = 1\nprint(x\n")
    assert syntax.status == "error" and "SyntaxError" in syntax.error_summary(), syntax
    assert 'File "/work/main.py", line 2' in syntax.error_summary()


@pytest.mark.parametrize(
    "code, status, summary",
    [
        ("import sys\nsys.exit(3)\n", "error", "exited with code 3"),
        ("x = 1\n", "no_output", "the program printed nothing (print the answer)"),
        ("input()\n", "error", "EOFError: EOF when reading a line"),  # stdin is empty
        (
            "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
            "killed",
            "killed by SIGTERM",
        ),
        ("import ctypes\nctypes.string_at(0)\n", "killed", "killed by SIGSEGV"),
        (
            "fs = [open('/dev/null') for _ in range(1000)]\n",
            "error",
            "Too many open files: '/dev/null'",
        ),
        (
            "import sys\nfor _ in range(1000):\n    sys.stderr.write('e' * 65536)\n",
            "output_limit",
            "printed more than 64 KB of output and was stopped",
        ),
    ],
)
def test_statuses_and_their_summaries(ns_sandbox: Sandbox, code, status, summary):
    result = ns_sandbox.run_python_sync(code)
    assert result.status == status, result
    assert result.error_summary().endswith(summary), result.error_summary()


def test_programs_run_side_by_side(ns_sandbox: Sandbox):
    async def four() -> list[str]:
        runs = [ns_sandbox.run_python(f"print({i} * {i})") for i in range(4)]
        return [result.stdout for result in await asyncio.gather(*runs)]

    assert asyncio.run(four()) == ["0\n", "1\n", "4\n", "9\n"]


def test_runs_leave_no_open_descriptors_behind(ns_sandbox: Sandbox):
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    ns_sandbox.run_python_sync("print(1)")  # the probe and first-run set-up done
    before = open_fds()
    for code, limits in [
        ("print(1)", Limits()),
        ("import time\ntime.sleep(5)", Limits(wall_s=0.3)),
        ("print('x' * 100000)", Limits(output_kb=1)),
        ("1 / 0", Limits()),
    ]:
        ns_sandbox.run_python_sync(code, limits)
    assert open_fds() == before


def test_a_file_over_the_file_limit_cannot_be_written(ns_sandbox: Sandbox):
    code = "open('big', 'wb').write(b'x' * (5 << 20))\n"
    result = ns_sandbox.run_python_sync(code, Limits(file_mb=4))
    assert result.status == "error", result
    assert "File too large" in result.stderr or "No space left" in result.stderr


def test_auto_chooses_a_mode_with_guarantees():
    sb = sandbox_or_skip("auto")
    assert sb.check() in ("bwrap", "unshare")
    if shutil.which("bwrap"):
        assert sb.check() == "bwrap"


def test_modes_refuse_with_what_is_missing_and_how_to_fix_it(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither bwrap nor unshare on it
    with pytest.raises(SandboxUnavailable, match="bwrap not on PATH") as e:
        Sandbox("bwrap").check()
    assert "apt-get install bubblewrap" in str(e.value) and "mode='rlimits-only'" in str(e.value)
    with pytest.raises(SandboxUnavailable, match="unshare: unshare, mount, setpriv not on PATH"):
        Sandbox("unshare").check()
    with pytest.raises(SandboxUnavailable, match="no sandbox mode with guarantees") as e:
        asyncio.run(Sandbox().run_python("print(1)"))
    assert "user namespaces" in str(e.value) and "rlimits-only" in str(e.value)


def test_a_bwrap_that_cannot_make_namespaces_is_refused(open_tmp: Path, monkeypatch):
    """A host without user namespaces, simulated: a `bwrap` that fails the way bwrap does there."""
    fake = open_tmp / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{open_tmp}:{os.environ['PATH']}")
    with pytest.raises(SandboxUnavailable, match="No permissions to create new namespace"):
        Sandbox("bwrap").check()


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, programs run as nobody")
def test_as_root_places_nobody_cannot_enter_are_refused(open_tmp: Path):
    closed = open_tmp / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(SandboxUnavailable, match=f"lies under {closed}, which the sandbox user"):
        Sandbox("bwrap", python=str(closed / "bin" / "python3")).check()
    with pytest.raises(SandboxUnavailable, match=f"nobody cannot enter {closed}.*such as /tmp"):
        Sandbox("rlimits-only", tmp_dir=closed).run_python_sync("print(1)")
    assert not list(closed.iterdir())


def test_an_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown sandbox mode 'docker'.*rlimits-only"):
        Sandbox("docker")
    assert MODES == ("auto", "bwrap", "unshare", "rlimits-only")


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"wall_s": 0}, "wall_s"),
        ({"cpu_s": -1}, "cpu_s"),
        ({"memory_mb": 1}, "memory_mb"),
        ({"file_mb": 0}, "file_mb"),
        ({"procs": 1}, "procs"),
        ({"output_kb": "lots"}, "output_kb"),
        ({"wall": 3}, "wall"),  # a misspelt field is an error, not ignored
    ],
)
def test_invalid_limits_name_the_field(bad, field):
    with pytest.raises(ValidationError) as e:
        Limits(**bad)
    assert field in str(e.value)


def test_limits_validate_from_a_config_table():
    assert Limits.model_validate({"wall_s": 2, "procs": 8}) == Limits(wall_s=2.0, procs=8)


def test_rlimits_only_runs_in_a_fresh_folder_it_removes(open_tmp: Path, monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("MIXKIT_SANDBOX_TEST_SECRET", secret)
    sb = sandbox_or_skip("rlimits-only", tmp_dir=open_tmp)
    code = (
        "import os\n"
        "os.makedirs('locked/in')\n"
        "os.chmod('locked', 0)  # its folder must still be removed\n"
        "open('scratch.txt', 'w').write('x')\n"
        "print(sorted(os.listdir('.')), dict(os.environ))\n"
    )
    result = sb.run_python_sync(code)
    assert result.status == "ok" and result.mode == "rlimits-only", result
    assert result.stdout.startswith("['locked', 'main.py', 'scratch.txt']")
    assert secret not in result.stdout
    assert not list(open_tmp.iterdir()), "the working folder was not removed"


def test_rlimits_only_kills_its_session_at_the_deadline(open_tmp: Path):
    sb = sandbox_or_skip("rlimits-only", tmp_dir=open_tmp)
    marker = f"mixkit-sandbox-test-{uuid.uuid4().hex}"
    body = "import os, time\nos.fork()\nwhile True:\n    time.sleep(0.1)\n"
    result = sb.run_python_sync(marked(body, marker), Limits(wall_s=0.5, procs=256))
    assert result.status == "timeout" and result.wall_s <= 1.5, result
    assert not leftovers(marker)
    assert not list(open_tmp.iterdir())


def test_rlimits_only_kills_the_children_left_in_its_process_group(open_tmp: Path):
    sb = sandbox_or_skip("rlimits-only", tmp_dir=open_tmp)
    marker = f"mixkit-sandbox-test-{uuid.uuid4().hex}"
    body = "import os, time\nif os.fork() == 0:\n    time.sleep(30)\nprint('parent done')\n"
    result = sb.run_python_sync(marked(body, marker), Limits(wall_s=5, procs=256))
    # the child holds the pipes open, yet the program's own exit decides its status
    assert result.status == "ok" and result.stdout == "parent done\n", result
    assert not leftovers(marker)
