"""serve is a face over the public moa API: it imports only what `mixkit.moa` exports."""

from __future__ import annotations

import ast
from pathlib import Path

import mixkit.moa
import mixkit.serve

SERVE = Path(mixkit.serve.__file__).parent


def test_serve_uses_only_names_that_mixkit_moa_exports():
    used: set[str] = set()
    for path in SERVE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mixkit.moa"):
                assert node.module == "mixkit.moa", f"{path.name} imports {node.module}"
                used |= {alias.name for alias in node.names}
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("mixkit.moa.") for a in node.names), path.name
    assert used, "serve no longer imports mixkit.moa? then this test checks nothing"
    assert used <= set(mixkit.moa.__all__), used - set(mixkit.moa.__all__)
