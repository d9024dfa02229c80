"""The docs name only what is in the tree: every file in docs/ARCHITECTURE.md's layout and the
README's map exists, every path the README and docs/ quote exists, and every `mixkit COMMAND`
they show is a real command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mixkit.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FILE = re.compile(r"^[\w.\-/]+(/|\.(py|toml|md|json|js|css|html|txt|png))$")


def tree_paths(text: str, heading: str) -> list[str]:
    """The paths a layout block names: its first column, nested by indentation, plus the file
    names its descriptions mention (`providers/  base.py (...), local.py (...)`)."""
    start = text.index(heading)
    begin = text.index("```\n", start) + 4
    block = text[begin : text.index("\n```", begin)]
    paths, stack = [], []  # stack of (indent, folder)
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        name, _, description = line.strip().partition(" ")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = "".join(folder for _, folder in stack)
        if FILE.match(name):
            paths.append(parent + name)
            if name.endswith("/"):
                stack.append((indent, name))
                parent += name
        mentions = description if FILE.match(name) else line
        for mentioned in re.findall(r"\b([\w\-]+\.(?:py|toml|md))\b", mentions):
            paths.append(parent + mentioned)
    return paths


def resolves(path: str) -> bool:
    """A quoted path exists from the repository root, src/, src/mixkit/ or docs/."""
    bases = (ROOT, ROOT / "src", ROOT / "src" / "mixkit", ROOT / "docs")
    return any((base / path).exists() for base in bases)


@pytest.mark.parametrize(
    "doc, heading", [("docs/ARCHITECTURE.md", "## Layout"), ("README.md", "## Map of the code")]
)
def test_every_file_a_layout_names_exists(doc, heading):
    paths = tree_paths((ROOT / doc).read_text(), heading)
    assert len(paths) > 10, "the layout block was not found or not parsed"
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"{doc} names files that are not in the tree: {missing}"


def test_the_architecture_layout_lists_every_source_file():
    tree = tree_paths((ROOT / "docs/ARCHITECTURE.md").read_text(), "## Layout")
    listed = {p.removeprefix("src/mixkit/") for p in tree}
    sources = {
        str(p.relative_to(ROOT / "src" / "mixkit"))
        for p in (ROOT / "src" / "mixkit").rglob("*.py")
        if p.name != "__init__.py" and p.name != "__main__.py" and "serve/web" not in str(p)
    }
    assert not sources - listed, f"not in docs/ARCHITECTURE.md's layout: {sources - listed}"


def test_every_path_the_docs_quote_exists():
    missing = []
    for doc in DOCS:
        for quoted in re.findall(r"`([^`\s]+)`", doc.read_text()):
            path = quoted.split("::")[0].rstrip(":,.")
            if "/" not in path.rstrip("/") or any(c in path for c in "*<>$~#"):
                continue  # a plain name, or a placeholder, pattern or runtime folder
            if path.startswith(("http", "/", "runs/")) or not FILE.match(path):
                continue
            if not resolves(path):
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def shown_commands(text: str) -> set[str]:
    """`mixkit X` in inline code, and lines of fenced blocks that run `mixkit X` (or -m mixkit X)."""
    shown = set(re.findall(r"`mixkit ([a-z][a-z\-]*)", text))
    for lang, block in re.findall(r"```([a-z]*)\n(.*?)```", text, re.S):
        if lang in ("", "bash", "sh", "console"):
            for line in block.splitlines():
                code = line.split("#")[0]
                shown |= set(re.findall(r"(?:^|&& |-m )mixkit ([a-z][a-z\-]*)", code.strip()))
    return shown


def test_every_mixkit_command_the_docs_show_exists():
    commands = {
        c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
    } | {g.name for g in app.registered_groups if g.name}  # command groups: `mixkit gate ...`
    shown = set().union(*(shown_commands(doc.read_text()) for doc in DOCS))
    assert {"ask", "serve", "train"} <= shown, shown  # the parser found the examples
    assert not shown - commands, f"the docs show commands that do not exist: {shown - commands}"
