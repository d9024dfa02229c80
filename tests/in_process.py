"""`mixkit ARGS` through the CLI's real entry point, `mixkit.cli.main()`, inside the test process.

A subprocess spends ~2.5 s starting Python and importing torch before the command even parses
its arguments (a `train` run ~5 s: its optimizer imports torch._dynamo, its plots matplotlib),
which in the test process is paid once; for a mistake that fails at once it is nearly all of
the cost. The result has the shape of `subprocess.run(..., capture_output=True, text=True)`,
so the same assertions apply. Each CLI area keeps at least one test that runs the console
script in a real subprocess, which shows that the script is this entry point and prints no
traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from unittest import mock

import torch

from mixkit.cli import main


def run_in_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """(returncode, stdout, stderr) of `mixkit ARGS`, as a subprocess.CompletedProcess.

    What a command may change for the rest of the process is put back afterwards: sys.argv,
    the environment (main() sets THP_MEM_ALLOC_ENABLE), torch's thread count (a `train` sets
    it) and torch's global random state (a resumed run restores its own).
    """
    argv = ["mixkit", *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    code: int | str | None = 0
    with (
        mock.patch.object(sys, "argv", argv),
        mock.patch.dict(os.environ, env or {}),
        torch.random.fork_rng(devices=[]),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            main()
        except SystemExit as e:
            code = e.code
        finally:
            torch.set_num_threads(threads)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed to stderr, status 1
        err.write(f"{code}\n")
        code = 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
