"""Run one function in N local processes joined by a gloo process group, and collect what each
returned (or the error it raised). A rank that dies is reported; one that hangs is killed at a
deadline, never waited on forever.

    from mixkit.testing.ranks import run_ranks, values

    def step(rank: int, world: int, tokens: int) -> float:   # module level: ranks are spawned
        layer = shard_experts(MoE(64, 128, 8))
        return float(layer(torch.randn(tokens, 64)).sum())

    print(values(run_ranks(step, 2, tokens=32)))

mixkit's expert-parallel tests and `bench/moe_parallel.py` start their ranks with it. It needs
torch (the moe extra), so `mixkit.testing` does not import it: import `mixkit.testing.ranks`.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mixkit import distributed as mdist


@dataclass
class RankResult:
    rank: int
    exitcode: int | None
    value: object = None
    error: str | None = None  # "ExcType: message" of an exception the function raised
    traceback: str | None = None


class RanksFailed(mdist.DistributedError):
    """A rank raised, died or outlived the deadline; the message carries every rank's result."""


def _entry(
    fn: Callable[..., Any], rank: int, world: int, tmp: str, opts: dict, kwargs: dict
) -> None:
    torch.set_num_threads(opts["threads"])
    os.environ["MIXKIT_DIST_TIMEOUT"] = str(opts["timeout_s"])
    out = Path(tmp) / f"rank{rank}.pt"
    report: dict[str, Any]
    try:
        if opts["process_group"]:
            dist.init_process_group(
                "gloo",
                init_method=f"file://{tmp}/store",
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=opts["timeout_s"]),
            )
        report = {"value": fn(rank, world, **kwargs)}
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        report = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    finally:
        mdist.destroy()
    torch.save(report, out.with_suffix(".part"))
    os.replace(out.with_suffix(".part"), out)  # the parent never reads half a file


def _collect(tmp: str, procs: list[Any]) -> list[RankResult]:
    results = []
    for r, p in enumerate(procs):
        res = RankResult(r, p.exitcode)
        file = Path(tmp) / f"rank{r}.pt"
        if file.exists():
            data = torch.load(file, weights_only=False)
            res.value, res.error, res.traceback = (
                data.get("value"),
                data.get("error"),
                data.get("traceback"),
            )
        results.append(res)
    return results


def run_ranks(
    fn: Callable[..., Any],
    world: int,
    *,
    timeout_s: float = 60.0,
    deadline_s: float = 240.0,
    threads: int = 1,
    process_group: bool = True,
    **kwargs: Any,
) -> list[RankResult]:
    """Run fn(rank, world, **kwargs) in `world` spawned processes, in rank order.

    fn must be importable (module level). timeout_s bounds each collective; all ranks are killed
    after deadline_s, which raises RanksFailed. threads: torch threads per rank. process_group
    False starts the processes without one (a one-process baseline, say).
    """
    ctx = mp.get_context("spawn")
    opts = {"timeout_s": timeout_s, "threads": threads, "process_group": process_group}
    with tempfile.TemporaryDirectory(prefix="mixkit-ranks-") as tmp:
        procs = [
            ctx.Process(target=_entry, args=(fn, r, world, tmp, opts, kwargs), daemon=True)
            for r in range(world)
        ]
        for p in procs:
            p.start()
        end = time.monotonic() + deadline_s
        for p in procs:
            p.join(max(0.0, end - time.monotonic()))
        # alive with no result: a rank that reported and is still exiting has not hung
        hung = [
            r
            for r, p in enumerate(procs)
            if p.is_alive() and not (Path(tmp) / f"rank{r}.pt").exists()
        ]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        results = _collect(tmp, procs)
    if hung:
        raise RanksFailed(f"ranks {hung} were still running after {deadline_s}s: {results}")
    return results


def values(results: list[RankResult]) -> list[Any]:
    """Every rank's return value; RanksFailed with the first failed rank's traceback otherwise."""
    for res in results:
        if res.error is not None or res.exitcode != 0:
            raise RanksFailed(
                f"rank {res.rank} failed (exit {res.exitcode}): {res.traceback or res.error}"
            )
    return [res.value for res in results]
