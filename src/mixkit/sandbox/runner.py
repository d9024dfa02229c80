"""Sandbox: run one model-written Python program in a sandbox mode and say what came of it.

    sb = Sandbox()                          # "auto": bwrap, else unshare, else SandboxUnavailable
    result = await sb.run_python("print(6 * 7)", Limits(wall_s=5))
    result.status, result.stdout            # ("ok", "42\n")

The program never runs in mixkit's process. Its output is read through pipes with a cap; at the
wall-clock deadline, at the output cap, or when the awaiting task is cancelled, the whole tree is
killed: in the namespace modes by killing the namespace's init (the kernel then kills every
process in it, daemons included, before the init is reaped), in rlimits-only by killing its
session (tree.py).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from mixkit.errors import ConfigError
from mixkit.sandbox.modes import (
    FIX,
    GUARANTEED,
    MODES,
    Launch,
    SandboxUnavailable,
    interpreter,
    launch,
    make_workdir,
    probe,
    remove_tree,
)
from mixkit.sandbox.result import Limits, RunResult, Status, classify
from mixkit.sandbox.tree import InitPid, kill_group, kill_now, poll, reap, until_gone

# (mode, PATH, interpreter, binds, euid) -> "" when the mode works, else why not
_PROBES: dict[tuple[str, str, str, tuple[str, ...], int], str] = {}


class Sandbox:
    """Runs Python programs in a sandbox. `mode` is one of MODES: "auto" picks the best mode with
    guarantees (bwrap, then unshare) and refuses when neither works; "rlimits-only" (limits and a
    clean environment, no isolation) runs only when asked for by name. `python`: the interpreter
    programs run with (default /usr/bin/python3, else this Python). `tmp_dir`: where rlimits-only
    makes its working folders (the namespace modes write nothing to the host's disk)."""

    def __init__(
        self, mode: str = "auto", *, python: str | None = None, tmp_dir: str | Path | None = None
    ):
        if mode not in MODES:
            raise ConfigError(f"unknown sandbox mode {mode!r} (choose from: {', '.join(MODES)})")
        self.mode = mode
        self.python = python
        self.tmp_dir = str(tmp_dir) if tmp_dir is not None else None
        self._chosen: tuple[str, str, list[str]] | None = None

    def check(self) -> str:
        """The mode programs will run in, after running a test program in it once (per process);
        SandboxUnavailable, saying what is missing and how to fix it, when it does not work."""
        if self._chosen is not None:
            return self._chosen[0]
        python, binds = interpreter(self.python)
        candidates = GUARANTEED if self.mode == "auto" else (self.mode,)
        reasons = []
        for mode in candidates:
            key = (mode, os.environ.get("PATH", ""), python, tuple(binds), os.geteuid())
            if key not in _PROBES:
                _PROBES[key] = probe(mode, python, binds)
            if not _PROBES[key]:
                self._chosen = (mode, python, binds)
                return mode
            reasons.append(f"{mode}: {_PROBES[key]}")
        if self.mode == "auto":
            what = "no sandbox mode with guarantees (bwrap, unshare) works on this host"
        else:
            what = f"sandbox mode '{self.mode}' does not work on this host"
        fix = f"; {FIX}" if self.mode != "rlimits-only" else ""
        raise SandboxUnavailable(f"{what} ({'; '.join(reasons)}){fix}")

    async def run_python(self, code: str, limits: Limits | None = None) -> RunResult:
        """Run `code` as a Python program; its result, whatever it did (never raises for what the
        program does; SandboxUnavailable when the mode cannot work here)."""
        limits = limits or Limits()
        if self._chosen is None:
            await asyncio.to_thread(self.check)
        assert self._chosen is not None
        mode, python, binds = self._chosen
        workdir = make_workdir(self.tmp_dir) if mode == "rlimits-only" else ""
        init = InitPid(enabled=mode == "bwrap")
        try:
            how = launch(mode, python, binds, limits, workdir, info_fd=init.write_fd)
            return await _run(how, code, limits, init)
        finally:
            init.close()
            if workdir:
                remove_tree(workdir)

    def run_python_sync(self, code: str, limits: Limits | None = None) -> RunResult:
        """run_python for code that has no event loop running."""
        return asyncio.run(self.run_python(code, limits))


class _Capture:
    """One output pipe, kept up to `cap` bytes; `total` counts everything the program wrote."""

    def __init__(self, cap_kb: int):
        self.cap = cap_kb * 1024
        self.data = bytearray()
        self.total = 0

    async def pump(self, stream: asyncio.StreamReader | None, overflow: asyncio.Event) -> None:
        while stream is not None and (chunk := await stream.read(1 << 16)):
            self.total += len(chunk)
            self.data += chunk[: max(0, self.cap - len(self.data))]
            if self.total > self.cap:
                overflow.set()
                return

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        if self.total > self.cap:
            text += f"\n[... cut by the sandbox at {self.cap // 1024} KB]"
        return text


async def _run(how: Launch, code: str, limits: Limits, init: InitPid) -> RunResult:
    """Start the program, watch it to its end or a limit, kill what is left, classify."""
    with tempfile.TemporaryFile() as stdin:  # the code reaches the launcher on stdin
        stdin.write(code.encode("utf-8", errors="replace"))  # a lone surrogate becomes "?"
        stdin.seek(0)
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *how.argv, stdin=stdin, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=how.env, cwd=how.cwd, start_new_session=True,
            user=how.user, group=how.user, extra_groups=how.extra_groups,
            pass_fds=[init.write_fd] if init.write_fd >= 0 else [],
        )  # fmt: skip
    init.listen()
    out, err = _Capture(limits.output_kb), _Capture(limits.output_kb)
    try:
        stopped = await _watch(proc, out, err, limits.wall_s)
    finally:  # a limit, or the awaiting task cancelled: nothing of the program outlives this
        if proc.returncode is None:
            kill_now(proc.pid, how.mode, init.pid)
            await reap(proc)
        if how.mode == "rlimits-only":
            await kill_group(proc.pid)  # its children that stayed in its process group
        if init_pid := await init.wait(timeout=1.0):
            await until_gone(init_pid)
        proc._transport.close()  # type: ignore[attr-defined]  # its pipes, now, not at GC
    wall = time.monotonic() - start
    stdout, stderr = out.text(), err.text()
    if stopped is not None:
        return RunResult(stopped, stdout, stderr, None, wall, how.mode, limits)
    assert proc.returncode is not None
    shell_style = how.mode != "rlimits-only"  # an init reports a signal as 128 + its number
    status, exit_code = classify(proc.returncode, stdout, stderr, shell_style=shell_style)
    return RunResult(status, stdout, stderr, exit_code, wall, how.mode, limits)


async def _watch(
    proc: asyncio.subprocess.Process, out: _Capture, err: _Capture, wall_s: float
) -> Status | None:
    """Read both pipes until the program ends: None, or the limit that stops it first
    ("timeout", "output_limit")."""
    overflow = asyncio.Event()
    pumps = [
        asyncio.ensure_future(out.pump(proc.stdout, overflow)),
        asyncio.ensure_future(err.pump(proc.stderr, overflow)),
    ]
    exited = asyncio.ensure_future(poll(lambda: proc.returncode is not None))
    over = asyncio.ensure_future(overflow.wait())
    try:
        done, _ = await asyncio.wait({exited, over}, timeout=wall_s, return_when="FIRST_COMPLETED")
        if over in done:
            return "output_limit"
        if exited not in done:
            return "timeout"
        # Ended: read what is left. In the namespace modes every writer is gone or going (the
        # namespace ends with its init); in rlimits-only a process that left the program's
        # session may hold the pipes open, so stop waiting soon.
        await asyncio.wait(pumps, timeout=1.0)
        return "output_limit" if overflow.is_set() else None
    finally:
        for task in (*pumps, exited, over):
            task.cancel()
