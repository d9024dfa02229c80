"""Hostile programs, run for real in each namespace mode (bwrap, unshare): each attack ends in a
clear failure of its call (status + message) within the deadline + 1 s, with no process and no
file left behind.

Every program re-executes itself with a unique marker as its last argument, so that any process
of it (forked ones included) can be found by a scan of /proc/*/cmdline afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import uuid
from pathlib import Path

import pytest

from mixkit.sandbox import Limits, RunResult, Sandbox

from .conftest import leftovers, marked

FAST = Limits(wall_s=3, cpu_s=2, memory_mb=256, file_mb=4, procs=16, output_kb=64)


def run(sb: Sandbox, body: str, limits: Limits = FAST) -> tuple[RunResult, str]:
    marker = f"mixkit-sandbox-test-{uuid.uuid4().hex}"
    result = sb.run_python_sync(marked(body, marker), limits)
    assert result.wall_s <= limits.wall_s + 1, result
    assert not leftovers(marker), f"processes left behind: {leftovers(marker)}"
    return result, marker


def test_a_socket_to_a_listener_on_the_host_is_refused(ns_sandbox: Sandbox):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        body = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        result, _ = run(ns_sandbox, body)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert result.status == "error", result
    assert "ConnectionRefusedError" in result.error_summary() or "unreachable" in result.stderr


def test_the_environment_is_not_inherited(ns_sandbox: Sandbox, monkeypatch):
    secret = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("MIXKIT_SANDBOX_TEST_SECRET", secret)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    body = (
        "import glob, os\n"
        "print(dict(os.environ))\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        print(path, open(path, 'rb').read())\n"
        "    except OSError as e:\n"
        "        print(path, e)\n"
        "os.environ['MIXKIT_SANDBOX_TEST_SECRET']\n"
    )
    result, _ = run(ns_sandbox, body)
    assert result.status == "error", result
    assert "KeyError: 'MIXKIT_SANDBOX_TEST_SECRET'" in result.error_summary()
    assert "'HOME': '/tmp'" in result.stdout
    assert secret not in result.stdout + result.stderr


def test_the_home_folder_and_the_log_database_are_not_there(
    ns_sandbox: Sandbox, tmp_path: Path, monkeypatch
):
    secret = uuid.uuid4().hex
    mixkit_home = tmp_path / "mixkit-home"
    mixkit_home.mkdir()
    with sqlite3.connect(mixkit_home / "logs.db") as db:
        db.execute("CREATE TABLE t (secret TEXT)")
        db.execute("INSERT INTO t VALUES (?)", (secret,))
    db.close()
    monkeypatch.setenv("MIXKIT_HOME", str(mixkit_home))
    in_home = Path.home() / f".mixkit-sandbox-test-{uuid.uuid4().hex}"
    in_home.write_text(secret)
    try:
        paths = [str(mixkit_home / "logs.db"), str(Path.home() / ".mixkit" / "logs.db")]
        body = (
            "import os\n"
            f"for path in {paths!r}:\n"
            "    print(path, os.path.exists(path))\n"
            f"print(os.path.exists({str(Path.home())!r}) and os.listdir({str(Path.home())!r}))\n"
            f"open({str(in_home)!r}).read()\n"
        )
        result, _ = run(ns_sandbox, body)
    finally:
        in_home.unlink()
    assert result.status == "error", result
    assert "FileNotFoundError" in result.error_summary()
    assert " True" not in result.stdout and secret not in result.stdout + result.stderr


def test_nothing_is_written_outside_the_working_folder(ns_sandbox: Sandbox, tmp_path: Path):
    name = f"escaped-{uuid.uuid4().hex}"
    targets = [f"/{name}", f"../{name}", f"/usr/{name}", str(Path.home() / name)]
    host_tmp = Path("/tmp") / name  # the sandbox's /tmp is its own; it must not be the host's
    body = (
        f"open('/tmp/{name}', 'w').write('in the sandbox /tmp')\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('escaped')\n"
        "        print('WROTE', path)\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__, path)\n"
        f"open({str(tmp_path / name)!r}, 'w').write('escaped')\n"
    )
    result, _ = run(ns_sandbox, body)
    assert result.status == "error", result
    assert "FileNotFoundError" in result.error_summary()
    assert "WROTE" not in result.stdout and result.stdout.count("Error") == len(targets)
    for path in [Path("/") / name, Path.home() / name, host_tmp, tmp_path / name]:
        assert not path.exists(), path
    assert [p.name for p in tmp_path.iterdir()] == ["sandbox-tmp"]  # the fixture checks it is empty


def test_a_fork_bomb_is_held_to_the_process_limit(ns_sandbox: Sandbox):
    body = (
        "import os\n"
        "first, top = os.getpid(), 0\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
        "    if os.getpid() == first:\n"
        "        n = sum(name.isdigit() for name in os.listdir('/proc'))\n"
        "        if n > top:\n"
        "            top = n\n"
        "            print('processes', n, flush=True)\n"
    )
    limits = FAST.model_copy(update={"wall_s": 0.6, "procs": 12})
    result, _ = run(ns_sandbox, body, limits)
    assert result.status in ("timeout", "error"), result
    counts = [int(line.split()[1]) for line in result.stdout.splitlines() if line]
    assert counts and max(counts) <= limits.procs, result.stdout


def test_an_endless_loop_is_stopped_at_its_cpu_limit(ns_sandbox: Sandbox):
    result, _ = run(ns_sandbox, "while True:\n    pass\n", FAST.model_copy(update={"cpu_s": 1}))
    assert result.status == "timeout", result
    assert "CPU" in result.error_summary() or "timed out" in result.error_summary()


def test_a_sleeping_loop_is_stopped_at_the_wall_clock_deadline(ns_sandbox: Sandbox):
    limits = FAST.model_copy(update={"wall_s": 0.5})
    result, _ = run(ns_sandbox, "import time\nwhile True:\n    time.sleep(0.1)\n", limits)
    assert result.status == "timeout" and result.exit_code is None, result
    assert result.error_summary() == "timed out after 0.5 s"


def test_a_memory_bomb_runs_out_of_memory(ns_sandbox: Sandbox):
    body = (
        "print(open('/proc/self/oom_score_adj').read().strip())\n"
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n"
    )
    result, _ = run(ns_sandbox, body, FAST.model_copy(update={"memory_mb": 128}))
    assert result.status == "memory", result
    assert result.error_summary().startswith("ran out of memory (limit 128 MB)")
    assert result.stdout == "1000\n"  # and under host memory pressure, the first to go


def test_100_mb_of_output_is_cut_at_the_output_limit(ns_sandbox: Sandbox):
    body = "import sys\nchunk = 'x' * 65536\nfor _ in range(1600):\n    sys.stdout.write(chunk)\n"
    result, _ = run(ns_sandbox, body, FAST.model_copy(update={"output_kb": 16, "wall_s": 2.0}))
    assert result.status == "output_limit", result.error_summary()
    kept, cut = result.stdout.split("\n")
    assert kept == "x" * 16384, len(kept)  # the first 16 KB, then the mark
    assert cut == "[... cut by the sandbox at 16 KB]"
    assert "more than 16 KB" in result.error_summary()


def test_killing_the_parent_leaves_mixkit_and_the_sandbox_standing(ns_sandbox: Sandbox):
    body = (
        "import os, time\n"
        "parent = os.getppid()\n"
        "os.kill(parent, 9)\n"
        "try:\n"
        "    os.kill(-1, 9)  # and every process it may signal but itself\n"
        "except ProcessLookupError:\n"
        "    print('no process to kill')\n"
        "time.sleep(0.1)\n"
        "print('parent', parent, 'still', os.getppid())\n"
    )
    result, _ = run(ns_sandbox, body)
    # the parent is the namespace's init: a signal from inside cannot kill it
    assert result.status == "ok", result
    assert result.stdout == "no process to kill\nparent 1 still 1\n", result.stdout
    again, _ = run(ns_sandbox, "print(6 * 7)\n")  # and the sandbox still works
    assert again.status == "ok" and again.stdout == "42\n"


def test_a_daemon_does_not_outlive_its_program(ns_sandbox: Sandbox):
    body = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.close(1)\n"
        "        os.close(2)\n"
        "        time.sleep(30)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "time.sleep(0.05)\n"
        "print('daemon started')\n"
    )
    result, _ = run(ns_sandbox, body)  # run() asserts that no process of it is left
    assert result.status == "ok" and result.stdout == "daemon started\n", result


def test_cancelling_the_awaiting_task_kills_the_tree(ns_sandbox: Sandbox):
    marker = f"mixkit-sandbox-test-{uuid.uuid4().hex}"
    code = marked("import time\nwhile True:\n    time.sleep(0.1)\n", marker)

    async def start_then_cancel() -> list[int]:
        task = asyncio.create_task(ns_sandbox.run_python(code, Limits(wall_s=30)))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if leftovers(marker):
                break
        running = leftovers(marker)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return running

    assert asyncio.run(start_then_cancel()), "the program never started"
    assert not leftovers(marker)


def test_a_nested_user_namespace_is_refused(ns_sandbox: Sandbox):
    body = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER\n"
        "    raise OSError(ctypes.get_errno(), 'unshare: ' + os.strerror(ctypes.get_errno()))\n"
        "print('made a user namespace')\n"
    )
    result, _ = run(ns_sandbox, body)
    assert result.status == "error" and "OSError" in result.error_summary(), result
