"""Sandbox test helpers: a sandbox per namespace mode, and finding a program's processes.

A mode this host cannot run is skipped, or fails where MIXKIT_REQUIRE_SANDBOX=1 (in .ci/run: CI
runs as root on Debian with bubblewrap and util-linux, where both modes must work)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mixkit.sandbox import Sandbox, SandboxUnavailable

PROLOGUE = """import os, sys
if sys.argv[-1] != {marker!r}:
    os.execv(sys.executable, [sys.executable, "-I", sys.argv[0], {marker!r}])
"""


def marked(body: str, marker: str) -> str:
    """`body` as a program that first re-executes itself with `marker` as its last argument, so
    that it, and every process it forks, shows the marker in /proc/PID/cmdline."""
    return PROLOGUE.format(marker=marker) + body


def leftovers(marker: str) -> list[int]:
    """The live processes whose command line holds `marker`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass  # gone meanwhile
    return found


def sandbox_or_skip(mode: str, **kwargs) -> Sandbox:
    sb = Sandbox(mode, **kwargs)
    try:
        sb.check()
    except SandboxUnavailable as e:
        if os.environ.get("MIXKIT_REQUIRE_SANDBOX"):
            pytest.fail(f"sandbox mode {mode} required (MIXKIT_REQUIRE_SANDBOX) but: {e}")
        pytest.skip(str(e))
    return sb


@pytest.fixture(params=["bwrap", "unshare"])
def ns_sandbox(request, tmp_path) -> Sandbox:
    """A sandbox in each mode with guarantees, its tmp_dir a folder that must stay empty."""
    work = tmp_path / "sandbox-tmp"
    work.mkdir()
    sb = sandbox_or_skip(request.param, tmp_dir=work)
    yield sb
    assert not list(work.iterdir()), "the sandbox left files behind"


@pytest.fixture
def open_tmp() -> Path:
    """An empty folder every user can traverse (rlimits-only runs as nobody when we are root)."""
    path = Path(tempfile.mkdtemp(prefix="mixkit-sandbox-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)
