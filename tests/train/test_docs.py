"""The README's training commands name real presets and real flags (docs must not drift)."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from mixkit.cli.app import app
from mixkit.train import preset_names

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands(name: str) -> list[str]:
    return [
        line
        for line in README.read_text("utf-8").splitlines()
        if line.startswith(f"mixkit {name} ")
    ]


def test_readme_training_commands_use_real_presets_and_flags():
    import mixkit.cli.train  # noqa: F401  registers the commands

    runner = CliRunner()
    for command in ("train", "generate"):
        lines = _commands(command)
        assert lines, f"README shows no `mixkit {command}` example"
        help_text = runner.invoke(app, [command, "--help"], terminal_width=200).output
        for line in lines:
            for flag in re.findall(r"(?<=\s)--?[a-z][a-z-]*", line.split("#")[0]):
                assert flag in help_text, (
                    f"README uses {flag} but `mixkit {command} --help` lacks it"
                )
            for preset in re.findall(r"--preset (\S+)", line):
                assert preset in preset_names(), f"README names unknown preset {preset}"
