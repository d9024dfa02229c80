"""The shape of the code: files under 400 lines, functions under 60, no imports hidden inside
function bodies (except deliberately lazy optional dependencies, each with a comment saying so).

A function's length runs from its `def` to its last line: signature and docstring count too
(a CLI command declares its options as one-line `Annotated` aliases to stay within it)."""

from __future__ import annotations

import ast
from pathlib import Path

import mixkit

SRC = Path(mixkit.__file__).parent
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_file_is_over_400_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in _files()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, long


def test_no_function_is_over_60_lines():
    long = {}
    for path in _files():
        for fn in _functions(ast.parse(path.read_text())):
            n = fn.end_lineno - fn.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(SRC)}:{fn.name}"] = n
    assert not long, long


def test_imports_inside_functions_are_lazy_optional_dependencies_with_a_reason():
    unexplained = []
    for path in _files():
        lines = path.read_text().splitlines()
        for fn in _functions(ast.parse(path.read_text())):
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                if not _says_lazy(lines, node.lineno - 1):
                    unexplained.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not unexplained, unexplained


def _says_lazy(lines: list[str], i: int) -> bool:
    """Line i has a `# lazy: ...` comment, or the comment block right above it starts with one."""
    if "# lazy" in lines[i]:
        return True
    while i > 0 and lines[i - 1].strip().startswith("#"):
        i -= 1
        if lines[i].strip().startswith("# lazy"):
            return True
    return False
