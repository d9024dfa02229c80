"""What a sandboxed program may use (`Limits`) and what came of it (`RunResult`).

`Limits` is a pydantic model, so a config can embed it (`[agents.x.sandbox]` validates like any
other field); bad values fail with pydantic's message naming the field. `RunResult.status` is one
word for code to branch on, `error_summary()` one short message for showing a model what went wrong.
"""

from __future__ import annotations

import math
import re
import signal
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OPEN_FILES = 256  # descriptors per process: plenty for a program that prints an answer
Status = Literal["ok", "error", "timeout", "memory", "output_limit", "killed", "no_output"]


class Limits(BaseModel):
    """Per-program limits. Every process of the program gets memory_mb, cpu_s and file_mb on its
    own (rlimits); procs caps how many processes it may have at once, so a program's memory in all
    is at most procs x memory_mb."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_s: float = Field(10.0, gt=0, le=3600, description="wall-clock seconds before the kill")
    cpu_s: float = Field(5.0, gt=0, le=3600, description="CPU seconds per process (rounded up)")
    memory_mb: int = Field(512, ge=32, le=1 << 20, description="address space per process, MB")
    file_mb: int = Field(16, ge=1, le=4096, description="largest file, and each writable folder")
    procs: int = Field(64, ge=2, le=4096, description="processes at once (the sandbox's init too)")
    output_kb: int = Field(64, ge=1, le=1 << 16, description="stdout and stderr, each, in KB")

    def rlimits(self) -> list[tuple[str, int, int]]:
        """(resource name, soft, hard) for the launcher. CPU: SIGXCPU at the soft limit, SIGKILL a
        second later if the program catches it. Also no core files, and OPEN_FILES descriptors."""
        cpu = math.ceil(self.cpu_s)
        mb = 1 << 20
        return [
            ("RLIMIT_CPU", cpu, cpu + 1),
            ("RLIMIT_AS", self.memory_mb * mb, self.memory_mb * mb),
            ("RLIMIT_FSIZE", self.file_mb * mb, self.file_mb * mb),
            ("RLIMIT_NPROC", self.procs, self.procs),
            ("RLIMIT_CORE", 0, 0),
            ("RLIMIT_NOFILE", OPEN_FILES, OPEN_FILES),
        ]


@dataclass(frozen=True)
class RunResult:
    """One program's run. `exit_code` is the program's exit status (minus the signal number when a
    signal ended it; None when the sandbox killed it at a limit), `wall_s` the seconds from start
    to the last process gone, `mode` the sandbox mode that ran it."""

    status: Status
    stdout: str
    stderr: str
    exit_code: int | None
    wall_s: float
    mode: str
    limits: Limits

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-ready fields (for a run log), the limits as a table."""
        fields = {k: v for k, v in self.__dict__.items() if k != "limits"}
        return {**fields, "limits": self.limits.model_dump()}

    def error_summary(self) -> str:
        """A short message for the model: empty when ok, else what went wrong (for an error, the
        end of its traceback)."""
        lim = self.limits
        if self.status == "ok":
            return ""
        if self.status == "timeout":
            if self.exit_code == -signal.SIGXCPU:
                return f"used more than {math.ceil(lim.cpu_s)} s of CPU time and was stopped"
            return f"timed out after {lim.wall_s:g} s"
        if self.status == "output_limit":
            return f"printed more than {lim.output_kb} KB of output and was stopped"
        if self.status == "no_output":
            return "the program printed nothing (print the answer)"
        if self.status == "killed":
            return f"killed by {_signal_name(-(self.exit_code or 0))}"
        tail = traceback_tail(self.stderr)
        if self.status == "memory":
            return f"ran out of memory (limit {lim.memory_mb} MB)\n{tail}".rstrip()
        return tail or f"exited with code {self.exit_code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_CARETS = re.compile(r"^\s*[~^]+\s*$")


def traceback_tail(stderr: str, lines: int = 3, chars: int = 400) -> str:
    """The last traceback's last frame and its exception line(s), or stderr's last lines."""
    text = stderr.rstrip()
    start = text.rfind("Traceback (most recent call last):")
    body = text[start:].splitlines()[1:] if start >= 0 else text.splitlines()
    kept = [line.rstrip() for line in body if line.strip() and not _CARETS.match(line)]
    if start >= 0:
        frames = [i for i, line in enumerate(kept) if line.lstrip().startswith('File "')]
        kept = kept[frames[-1] :] if frames else kept
    tail = "\n".join(line.strip() for line in kept[-lines:])
    return tail if len(tail) <= chars else "..." + tail[-chars:]


def classify(returncode: int, stdout: str, stderr: str, *, shell_style: bool) -> tuple[Status, int]:
    """The status of a program that ended by itself, and its exit code (minus the signal number
    for a signal). `shell_style`: the returncode comes from an init process (bwrap's, a shell)
    that reports a signal as 128 + its number, so an exit status above 128 reads as a signal."""
    code = returncode
    if shell_style and returncode > 128:
        code = -(returncode - 128)
    if code == 0:
        return ("ok" if stdout.strip() else "no_output"), 0
    if code == -signal.SIGXCPU:
        return "timeout", code
    if code < 0:
        return "killed", code
    last = stderr.rstrip().rsplit("\n", 1)[-1]
    if last.startswith("MemoryError"):
        return "memory", code
    return "error", code
