"""`--resume` is exact: N straight steps == SIGKILL mid-run + resume, bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tests.in_process import run_in_process
from tests.train.helpers import run_cli, tiny_overrides

# The killed run: the real training loop in a fresh process that SIGKILLs itself right after
# optimizer step KILL_AT (no chance to flush, close files or write a checkpoint).
KILLED_RUN = """
import os, signal, sys
from mixkit.train import Callback, load_config, train

class KillAt(Callback):
    def on_step(self, step):
        if step == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)

train(load_config(config_file=sys.argv[1]), sys.argv[2], callbacks=[KillAt()], plots=False)
"""
STEPS, CHECKPOINT_EVERY, KILL_AT = 24, 8, 13  # the last checkpoint before the kill is step 8


def write_config(tmp_path, corpus):
    # noisy top-k (RNG in every forward) and dropout: resume must restore the RNG state too
    sets = tiny_overrides(
        corpus,
        train__steps=STEPS,
        train__checkpoint_every=CHECKPOINT_EVERY,
        train__eval_every=8,
        train__log_every=4,
        model__dropout=0.1,
    )
    lines = ['preset = "tiny"']
    sections: dict[str, list[str]] = {}
    for item in sets:
        key, value = item.split("=", 1)
        *section, field = key.split(".")
        sections.setdefault(".".join(section), []).append(f"{field} = {value}")
    for section, fields in sections.items():
        lines += [f"[{section}]", *fields]
    path = tmp_path / "run.toml"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def test_resume_after_sigkill_matches_an_uninterrupted_run(corpus, tmp_path):
    config = write_config(tmp_path, corpus)

    # the killed run in its own process; beside it, the straight run in this one (the CLI's
    # entry point in process, tests/in_process.py: the same run without ~5 s of start-up)
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(config), str(tmp_path / "killed"), str(KILL_AT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    straight = run_in_process(
        "train", "--config", str(config), "--out", str(tmp_path / "straight"), "-q"
    )
    _, killed_err = killed.communicate(timeout=300)
    assert straight.returncode == 0, straight.stderr
    assert killed.returncode == -signal.SIGKILL, killed_err
    state = torch.load(tmp_path / "killed" / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 8  # steps 9..13 were done and lost: resume must redo them identically

    resumed = run_cli("train", "--resume", "--out", str(tmp_path / "killed"), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 8" in resumed.stdout

    a = load_file(tmp_path / "straight" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    # the optimizer state too, and the logged validation losses
    sa = torch.load(tmp_path / "straight" / "checkpoint" / "train_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "killed" / "checkpoint" / "train_state.pt", weights_only=True)
    for pa, pb in zip(
        sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    assert torch.equal(sa["torch_rng"], sb["torch_rng"])

    def evals(run):
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [(r["step"], r["val_loss"]) for r in map(json.loads, lines) if r["event"] == "eval"]

    assert evals("straight") == evals("killed")
    # the lost steps 9..13 of the killed run were dropped from its log and redone
    assert [s for s, _ in evals("killed")] == [8, 16, 24]
