"""A sandbox for model-written Python programs (what mixkit's program agents run).

    from mixkit.sandbox import Limits, Sandbox
    result = await Sandbox().run_python("print(6 * 7)", Limits(wall_s=5))
    result.status, result.stdout, result.error_summary()

Each program runs in its own process tree, never in mixkit's process, with no network, no
inherited environment, no view of the home folder or mixkit's log database, a fresh working
folder, and limits on CPU and wall time, memory, file size, processes and output. Modes (MODES):
"bwrap" (bubblewrap) and "unshare" (util-linux) give those guarantees through Linux namespaces;
"auto" picks the first that works here and refuses (SandboxUnavailable) when none does;
"rlimits-only" keeps only the limits and the clean environment, and runs only when named.
docs/sandbox.md says what holds in which mode. Never imports torch.
"""

from mixkit.sandbox.modes import MODES, SandboxUnavailable
from mixkit.sandbox.result import Limits, RunResult, Status
from mixkit.sandbox.runner import Sandbox

__all__ = ["MODES", "Limits", "RunResult", "Sandbox", "SandboxUnavailable", "Status"]
