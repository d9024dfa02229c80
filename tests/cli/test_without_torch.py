"""The Mixture-of-Agents, the server and the CLI work without torch (`pip install mixkit[moa]`);
a command that needs torch says which extra to install, in one line."""

from __future__ import annotations

import subprocess
import sys

NO_TORCH = "import sys; sys.modules['torch'] = None; "  # `import torch` now raises ImportError


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, timeout=120
    )


def test_moa_serve_evals_and_the_cli_import_without_torch():
    out = python(
        "import mixkit.moa, mixkit.serve, mixkit.evals, mixkit.testing, mixkit.cli;"
        "from mixkit.serve import create_app; create_app(); print('ok')"
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_torch_command_without_torch_is_one_clear_line():
    out = python(
        "sys.argv = ['mixkit', 'train', '--preset', 'tiny']; from mixkit.cli import main; main()"
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "pip install 'mixkit[train]'" in " ".join(out.stderr.split())
