"""`mixkit convert` and `mixkit upcycle` as a user runs them: a model goes to HF, back, to GGUF,
is upcycled and trained on; every mistake is one line and exit 2, with nothing left at OUT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixkit.cli import main
from mixkit.convert import export_hf, load_run

MIXKIT = [str(Path(sys.executable).parent / "mixkit")]


def mixkit(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1")
    return subprocess.run(MIXKIT + list(args), capture_output=True, text=True, env=env, timeout=300)


def in_process(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """(exit status, stdout + stderr) of `mixkit ARGS` through the CLI's entry point, in process
    (the subprocess tests below show that the console script is this entry point)."""
    monkeypatch.setattr(sys, "argv", ["mixkit", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, (out.out + out.err).replace("\n", " ")


def test_a_model_goes_to_hf_back_to_a_run_that_trains_and_to_gguf(
    moe_run, text, capsys, monkeypatch, tmp_path
):
    hf, back, gguf_file = tmp_path / "hf", tmp_path / "back", tmp_path / "m.gguf"
    code, out = in_process(capsys, monkeypatch, "convert", moe_run, "--to", "hf", hf)
    assert code == 0 and "(mixtral)" in out, out
    assert "Loading" not in out and "Writing" not in out  # transformers' progress bars are off
    code, out = in_process(
        capsys, monkeypatch, "convert", hf, "--to", "mixkit", back, "--data", text,
        "--set", "train.threads=1",
    )  # fmt: skip
    assert code == 0 and "mixkit train --resume" in out, out
    code, out = in_process(capsys, monkeypatch, "convert", back, "--to", "gguf", gguf_file)
    assert code == 0 and gguf_file.stat().st_size > 0, out
    code, out = in_process(
        capsys, monkeypatch, "train", "--resume", "--out", back, "--steps", "2", "--quiet"
    )
    assert code == 0 and "val loss" in out, out


def test_upcycle_cli_says_whether_step_0_is_exact(dense_run, capsys, monkeypatch, tmp_path):
    code, out = in_process(capsys, monkeypatch, "upcycle", dense_run, tmp_path / "a", "-E", "4")
    assert code == 0 and "equal the dense model's: yes" in out, out
    code, out = in_process(
        capsys, monkeypatch, "upcycle", dense_run, tmp_path / "b", "-E", "4", "--every", "2",
        "--router", "switch", "--k", "1",
    )  # fmt: skip
    assert code == 0 and "equal the dense model's: no" in out, out
    assert (tmp_path / "a" / "checkpoint" / "model.safetensors").exists()


def test_help_lists_the_options():
    r = mixkit("upcycle", "--help")
    assert r.returncode == 0
    for option in ("--experts", "--every", "--router", "--noise"):
        assert option in r.stdout


MISTAKES = {
    "missing source": (["convert", "{tmp}/nope", "--to", "hf", "{out}"], "does not exist"),
    "unknown format": (["convert", "{moe}", "--to", "onnx", "{out}"], "--to 'onnx'"),
    "not a mixkit run": (["convert", "{tmp}", "--to", "hf", "{out}"], "not a mixkit run"),
    "not an HF folder": (["convert", "{tmp}", "--to", "mixkit", "{out}"], "no config.json"),
    "damaged weights": (["convert", "{broken}", "--to", "mixkit", "{out}"], "cannot load"),
    "no GGUF twin": (["convert", "{gpt2}", "--to", "gguf", "{out}"], "GELU"),
    "bad dtype": (["convert", "{moe}", "--to", "gguf", "{out}", "--dtype", "q4"], "f16 or f32"),
    "already mixkit": (["convert", "{moe}", "--to", "mixkit", "{out}"], "already a mixkit run"),
    "already MoE": (["upcycle", "{moe}", "{out}", "-E", "4"], "already an MoE"),
    "output exists": (["convert", "{moe}", "--to", "hf", "{tmp}"], "already exists"),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_mistakes_are_one_line_and_exit_2_leaving_nothing(
    name, moe_run, gpt2_run, capsys, monkeypatch, tmp_path
):
    args, needle = MISTAKES[name]
    broken = tmp_path / "broken"
    if name == "damaged weights":  # an HF folder whose weights file is cut short
        export_hf(load_run(moe_run), broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    values = {"tmp": tmp_path, "out": tmp_path / "out", "moe": moe_run, "gpt2": gpt2_run}
    values["broken"] = broken
    code, err = in_process(capsys, monkeypatch, *(a.format(**values) for a in args))
    assert code == 2, err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_a_mistake_through_the_real_entry_point_shows_no_traceback(gpt2_run, tmp_path):
    r = mixkit("convert", str(gpt2_run), "--to", "gguf", str(tmp_path / "x.gguf"))
    assert r.returncode == 2
    assert "GELU" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.gguf").exists()
