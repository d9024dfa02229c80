"""Expert parallelism over real gloo process groups (2 and 4 ranks, started by the tests)."""

from __future__ import annotations

import pytest

from mixkit.testing.ranks import RanksFailed, run_ranks, values
from tests.parallel import workers

ROUTERS = ["noisy_topk", "topk", "switch", "expert_choice", "sigmoid_bias"]
CASES = (
    [(r, None, "train", 0) for r in ROUTERS]
    + [(r, 0.5, "train", 0) for r in ROUTERS if r != "expert_choice"]
    + [
        ("expert_choice", 1.5, "train", 0),
        ("noisy_topk", None, "eval", 0),
        ("sigmoid_bias", 1.0, "train", 1),
    ]
)
TOL = 1e-10  # float64


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_equals_single_process(world):
    reports = values(run_ranks(workers.equivalence, world, cases=CASES))
    dropped_somewhere = False
    for rank, report in enumerate(reports):
        assert len(report) == len(CASES)
        for case, errs in report.items():
            dropped_somewhere |= "cf=0.5" in case and errs.pop("dropped_any") > 0
            errs.pop("dropped_any", None)
            bad = {k: v for k, v in errs.items() if not v <= TOL}
            assert not bad, f"rank {rank}, {case}: {bad}"
            assert any(k.startswith("expert_grad.") for k in errs)
            assert "dense_grad.router.w_gate" in errs
    assert dropped_somewhere, "the capacity cases must actually drop assignments"


@pytest.fixture(scope="module")
def not_divisible():
    """Two ranks asked to split E=5 experts: both refuse. One launch, read by two tests."""
    return run_ranks(workers.not_divisible, 2, E=5)


def test_experts_must_divide_over_ranks(not_divisible):
    for res in not_divisible:
        assert res.error and res.error.startswith("ConfigError")
        assert "num_experts (5) is not divisible by the expert-parallel size (2)" in res.error


def test_mismatched_configs_are_named():
    results = run_ranks(workers.mismatched, 2)
    for res in results:
        assert res.error and res.error.startswith("ConfigError"), res
        assert "differs across ranks" in res.error and "capacity_factor" in res.error


def test_a_dead_rank_is_an_error_not_a_hang():
    # a hang would outlive the deadline, and run_ranks raises RanksFailed then
    results = run_ranks(workers.dies, 2, timeout_s=20, deadline_s=120)
    assert results[1].exitcode == 3
    assert results[0].error is not None and results[0].error.startswith("DistributedError"), (
        results[0]
    )
    assert "failed on rank 0 of 2" in results[0].error


def test_hierarchical_moe_is_refused_clearly():
    for res in run_ranks(workers.hierarchical, 2):
        assert res.error and res.error.startswith("ConfigError") and "HierarchicalMoE" in res.error


def test_a_hung_rank_is_killed_at_the_deadline():
    # 12 s: rank 0 must have started (spawn + import torch) and returned by then; with 3 s it had
    # not on a loaded 2-core machine, and was named too
    with pytest.raises(RanksFailed, match=r"ranks \[1\] were still running after 12"):
        run_ranks(workers.hangs, 2, deadline_s=12, process_group=False)


def test_a_failed_rank_is_named_by_values(not_divisible):
    with pytest.raises(RanksFailed, match="(?s)rank 0 failed .*ConfigError"):
        values(not_divisible)
