"""Multi-process training: gradients against one process, and real torchrun runs of the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixkit.testing.ranks import run_ranks, values
from tests.in_process import run_in_process
from tests.parallel import workers
from tests.train.helpers import write_corpus


@pytest.mark.parametrize(
    ("world", "ep_size", "router"),
    [(2, 2, "topk"), (2, 1, "topk"), (2, 2, "sigmoid_bias"), (4, 2, "switch"), (4, 4, "topk")],
)
def test_parallel_gradients_equal_one_process_on_the_global_batch(world, ep_size, router):
    for rank, errs in enumerate(
        values(run_ranks(workers.train_step_equivalence, world, ep_size=ep_size, router=router))
    ):
        n_expert = errs.pop("num_expert_params")
        assert n_expert == (2 if ep_size > 1 else 0)  # w_in, w_out of the one MoE layer
        bad = {k: v for k, v in errs.items() if not v <= 1e-10}
        assert not bad, f"rank {rank}: {bad}"


def test_transformer_gradients_under_expert_parallelism():
    for errs in values(
        run_ranks(workers.train_step_equivalence, 2, ep_size=2, router="topk", arch="transformer")
    ):
        errs.pop("num_expert_params")
        assert max(errs.values()) <= 1e-10, errs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "verse.txt")


class Torchrun:
    """`torchrun --nproc_per_node NPROC -m mixkit ARGS`, started; `result()` waits for it."""

    def __init__(self, nproc: int, *args: str):
        env = dict(os.environ, OMP_NUM_THREADS="1", MIXKIT_DIST_TIMEOUT="60")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
        ]
        # files, not pipes: several launches may run at once, and none is read until it ends
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [*cmd, "-m", "mixkit", *args],
            stdout=self.out,
            stderr=self.err,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: a timeout ends the ranks too
        )

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
        """Its exit status and output, as subprocess.run returns them."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise
        output = []
        for stream in (self.out, self.err):
            stream.seek(0)
            output.append(stream.read())
            stream.close()
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, *output)


def torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return Torchrun(nproc, *args).result(timeout)


def tiny(corpus: Path, out: Path, *more: str) -> list[str]:
    """`train` arguments for the tiny preset on the test corpus."""
    return ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), *more]


def _train_losses(run: Path) -> list[float]:
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r.get("event") == "train"]


def test_torchrun_expert_parallel_run_then_one_process_then_back(corpus, tmp_path):
    run = tmp_path / "run"
    common = [
        "--set",
        "train.eval_every=10",
        "--set",
        "train.checkpoint_every=30",
        "--set",
        "train.log_every=5",
        "-q",
    ]
    two = torchrun(2, *tiny(corpus, run, "--steps", "30", "--expert-parallel", "2", *common))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 ranks (expert parallel 2)" in two.stdout
    losses = _train_losses(run)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses

    # the checkpoint holds every expert, in the single-process format
    weights = load_file(run / "checkpoint" / "model.safetensors")
    experts = {k: v for k, v in weights.items() if ".experts." in k}
    assert experts and all(v.shape[0] == 4 for v in experts.values()), {
        k: v.shape for k, v in experts.items()
    }
    state = torch.load(run / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["expert_parallel"] == 2
    exp_avg = [
        s["exp_avg"] for s in state["optimizer"]["state"].values() if s["exp_avg"].dim() == 3
    ]
    assert exp_avg and all(t.shape[0] == 4 for t in exp_avg)

    # one process reads it back: the same validation loss the two ranks measured (this process:
    # `mixkit train` through its entry point, in process, see tests/in_process.py)
    val_2 = json.loads((run / "summary.json").read_text())["val_loss"]
    report = run_in_process("train", "--resume", "--out", str(run), "-q")
    assert report.returncode == 0, report.stderr
    val_line = next(
        line for line in report.stdout.splitlines() if line.startswith("step 30: val loss")
    )
    assert abs(float(val_line.split()[4].rstrip(",")) - val_2) < 1e-3, (val_line, val_2)

    # ... and continues it
    more = run_in_process("train", "--resume", "--out", str(run), "--steps", "40", "-q")
    assert more.returncode == 0, more.stderr
    assert "resuming at step 30" in more.stdout
    assert _train_losses(run)[-1] < losses[0] - 0.5

    # and the reverse: a 1-process checkpoint continues on two expert-parallel ranks
    back = torchrun(
        2, "train", "--resume", "--out", str(run), "--steps", "50", "--expert-parallel", "2", "-q"
    )
    assert back.returncode == 0, back.stderr[-3000:]
    assert "resuming at step 40" in back.stdout
    assert json.loads((run / "summary.json").read_text())["steps"] == 50


def test_bad_parallel_setups_are_one_line_errors(corpus, tmp_path):
    # three independent torchrun launches, started together and collected below
    odd_run = Torchrun(2, *tiny(corpus, tmp_path / "b", "--expert-parallel", "3"))
    # the hierarchical MoE is refused, not hung, under expert parallelism
    hier_sets = ["--set", "model.moe.num_experts=8", "--set", "model.moe.groups=2"]
    hier_run = Torchrun(2, *tiny(corpus, tmp_path / "h", *hier_sets, "--expert-parallel", "2"))
    # E=3 experts cannot be split over 2 ranks
    uneven_run = Torchrun(
        2,
        *tiny(corpus, tmp_path / "c", "--set", "model.moe.num_experts=3", "--expert-parallel", "2"),
    )

    alone = run_in_process(*tiny(corpus, tmp_path / "a", "--expert-parallel", "2"))
    assert alone.returncode == 2
    assert "needs 2 processes" in alone.stderr and "torchrun" in alone.stderr
    assert "Traceback" not in alone.stderr

    odd = odd_run.result()
    assert odd.returncode != 0
    assert (
        "error (rank 0): --expert-parallel (3) must divide the number of processes (2)"
        in " ".join(odd.stderr.split())
    )

    hier = hier_run.result()
    assert hier.returncode != 0
    assert "hierarchical MoE (model.moe.groups) is not expert-parallel yet" in " ".join(
        hier.stderr.split()
    )

    uneven = uneven_run.result()
    assert uneven.returncode != 0
    assert "num_experts (3) is not divisible by the expert-parallel size (2)" in " ".join(
        uneven.stderr.split()
    )
