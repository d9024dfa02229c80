"""The README's Serving section stays true: its flags exist, and its Python example runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mixkit.cli import main

README = Path(__file__).parents[2] / "README.md"


def serving_section() -> str:
    text = README.read_text()
    start = text.index("## Serving")
    return text[start : text.index("\n## ", start + 1)]


def test_every_serve_flag_in_the_readme_exists(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["mixkit", "serve", "--help"])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
    except SystemExit as e:
        assert not e.code
    help_text = capsys.readouterr().out
    commands = [line for line in serving_section().splitlines() if "mixkit serve" in line]
    used = {
        flag for line in commands for flag in re.findall(r"(--[a-z][a-z-]+)", line.split("#")[0])
    }
    assert used, "the Serving section shows no flags"
    assert {flag for flag in used if flag not in help_text} == set()


def test_the_readme_python_example_runs_against_a_server(server, capsys):
    code = re.search(r"```python\n(.*?)```", serving_section(), re.S).group(1)
    assert 'base_url="http://127.0.0.1:8000/v1"' in code and 'model="moa-lite"' in code
    # Same code, pointed at the test server and a mixture of fake agents instead of moa-lite.
    code = code.replace("http://127.0.0.1:8000/v1", server.url).replace('"moa-lite"', '"mix"')
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()
