"""`mixkit train` / `mixkit generate` through the real entry point: clear errors, no tracebacks.

Training, generating and one mistake run the console script in a subprocess; the other
mistakes, which fail before any work, call the same entry point in process (tests/in_process.py).
"""

from __future__ import annotations

import pytest

from tests.in_process import run_in_process
from tests.train.helpers import run_cli


def assert_clean_error(proc, *fragments):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    message = " ".join(proc.stderr.split())  # rich may wrap long lines
    assert message.startswith("error:")
    for fragment in fragments:
        assert fragment in message


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli(
        "train", "--preset", "tiny", "--data", str(corpus), "--steps", "30", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert "val loss" in proc.stdout and "active multiply-adds / token" in proc.stdout
    return out


def test_train_writes_checkpoint_log_and_plots(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"checkpoint", "log.jsonl", "loss.png", "expert_load.png", "summary.json"} <= names


def test_generate_prints_text(trained_run):
    proc = run_cli("generate", "--checkpoint", str(trained_run), "--prompt", "JULIET:", "-n", "50")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("JULIET:") and len(proc.stdout) > len("JULIET:") + 20


def test_bad_config_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('preset = "tiny"\n[model.moe]\nnum_experts = 0\n')
    assert_clean_error(
        run_in_process("train", "--config", str(bad), "--out", str(tmp_path / "o")),
        "model.moe.num_experts",
        "greater than or equal to 1",
    )
    assert_clean_error(run_in_process("train", "--preset", "nope"), "unknown preset 'nope'")
    assert_clean_error(
        run_in_process("train", "--set", "model.moe.router=switch", "--out", str(tmp_path / "o")),
        "model.moe: k (2) must be 1",
    )


def test_missing_data_is_one_clear_line(tmp_path):
    assert_clean_error(
        run_cli("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")),
        "does not exist",
        "--data",
    )


def test_corrupt_checkpoint_is_one_clear_line(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert_clean_error(run_in_process("generate", "--checkpoint", str(run)), "corrupt")
    assert_clean_error(run_in_process("train", "--resume", "--out", str(run)), "corrupt")
    assert_clean_error(
        run_in_process("generate", "--checkpoint", str(tmp_path / "none")), "no checkpoint"
    )
