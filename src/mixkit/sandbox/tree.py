"""Ending a sandboxed program's process tree, and knowing that it has ended.

In the namespace modes the program's tree lives in its own PID namespace, under an init (bwrap's,
or unshare mode's shell). When an init exits, the kernel kills every other process of its
namespace and waits for them all to be gone before the init itself becomes a zombie. So:

- to kill the tree, kill the init (SIGKILL from outside the namespace always reaches it);
- to know the tree is gone, wait for the init to be a zombie or gone. `unshare --fork` waits for
  its child, so its exit says so; bwrap's outer process exits as soon as its init reports the
  program's exit code, a moment before the namespace is empty, so for bwrap we learn the init's
  PID from `--info-fd` (InitPid) and wait for that process.

In rlimits-only there is no namespace: the program's session (process group) is killed, and a
process that left the session (setsid) is not found.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path


class InitPid:
    """The host PID of a bwrap sandbox's init, read from the pipe bwrap's --info-fd writes to."""

    def __init__(self, enabled: bool):
        self.read_fd, self.write_fd = os.pipe() if enabled else (-1, -1)
        self.pid: int | None = None
        self._buffer = bytearray()
        self._done: asyncio.Future[None] | None = None

    def listen(self) -> None:
        """After the start: close our copy of the write end, read bwrap's JSON as it comes."""
        if self.read_fd < 0:
            return
        os.close(self.write_fd)
        self.write_fd = -1
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        os.set_blocking(self.read_fd, False)
        loop.add_reader(self.read_fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.read_fd, 4096)
        except BlockingIOError:
            return
        self._buffer += chunk
        if chunk and b"}" not in self._buffer:
            return
        try:
            self.pid = int(json.loads(self._buffer.decode())["child-pid"])
        except (ValueError, KeyError, TypeError):
            self.pid = None
        self.close()

    async def wait(self, timeout: float) -> int | None:
        """The init's PID, once bwrap has written it (None if it never does)."""
        if self._done is not None and not self._done.done():
            await asyncio.wait([self._done], timeout=timeout)
        return self.pid

    def close(self) -> None:
        """Stop reading; close both ends (the write end too, if bwrap never started)."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        if self.read_fd >= 0:
            if self._done is not None:
                asyncio.get_running_loop().remove_reader(self.read_fd)
            os.close(self.read_fd)
            self.read_fd = -1
        if self._done is not None and not self._done.done():
            self._done.set_result(None)


def kill_now(pid: int, mode: str, init: int | None) -> None:
    """SIGKILL the program's tree without waiting: the namespace's init (`init`, else the outer
    process's children), or, in rlimits-only, the program's session."""
    targets = [] if mode == "rlimits-only" else [init] if init else children(pid)
    for target in targets:
        _signal(os.kill, target)
    if not targets:
        _signal(os.killpg, pid)


async def poll(done: Callable[[], bool], timeout: float = math.inf, every: float = 0.005) -> bool:
    """Wait until `done()` is true (True) or `timeout` seconds pass (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(every)
    return True


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for the outer process (bwrap, unshare, the rlimits-only program) to exit; kill its
    process group if it takes more than a few seconds. (Not proc.wait(): asyncio's waits for the
    pipes to close too, which a process that left the session can hold open in rlimits-only.)"""
    for _ in range(2):
        if await poll(lambda: proc.returncode is not None, timeout=3.0):
            return
        _signal(os.killpg, proc.pid)


async def kill_group(pgid: int, timeout: float = 3.0) -> None:
    """SIGKILL what is left of a process group (rlimits-only: the program's), and wait until its
    last member has died."""
    _signal(os.killpg, pgid)
    await poll(lambda: not _members(pgid), timeout)


def _members(pgid: int) -> list[int]:
    """The live processes (not zombies) of process group `pgid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


async def until_gone(pid: int, timeout: float = 5.0) -> None:
    """Wait until process `pid` is a zombie or gone (for an init: its namespace is empty)."""
    await poll(lambda: _gone(pid), timeout)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _signal(send: Callable[[int, int], None], target: int) -> None:
    """SIGKILL a process (os.kill) or a process group (os.killpg), if still there."""
    try:
        send(target, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def children(pid: int) -> list[int]:
    """The direct children of `pid`, from /proc."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
