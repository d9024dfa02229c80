"""Start N real processes joined by a gloo process group, run one worker function in each, and
collect what each returned (or the error it raised). A rank that dies or hangs is reported, never
waited on forever."""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class RankResult:
    rank: int
    exitcode: int | None
    value: object = None
    error: str | None = None  # "ExcType: message" of an exception the worker raised
    traceback: str | None = None


def _entry(fn, rank: int, world: int, tmp: str, timeout_s: float, kwargs: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MIXKIT_DIST_TIMEOUT"] = str(timeout_s)
    out = Path(tmp) / f"rank{rank}.pt"
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{tmp}/store",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        value = fn(rank, world, **kwargs)
        torch.save({"value": value}, out)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        torch.save({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}, out)
    finally:
        from mixkit import distributed as mdist

        mdist.destroy()


def run_ranks(
    fn, world: int, timeout_s: float = 60.0, deadline_s: float = 240.0, **kwargs
) -> list[RankResult]:
    """Run fn(rank, world, **kwargs) in `world` spawned processes; kill them all after deadline_s."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mixkit-ranks-") as tmp:
        procs = [
            ctx.Process(target=_entry, args=(fn, r, world, tmp, timeout_s, kwargs), daemon=True)
            for r in range(world)
        ]
        for p in procs:
            p.start()
        end = time.monotonic() + deadline_s
        for p in procs:
            p.join(max(0.0, end - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        results = []
        for r, p in enumerate(procs):
            file = Path(tmp) / f"rank{r}.pt"
            res = RankResult(r, p.exitcode)
            if file.exists():
                data = torch.load(file, weights_only=False)
                res.value, res.error, res.traceback = (
                    data.get("value"),
                    data.get("error"),
                    data.get("traceback"),
                )
            results.append(res)
        if hung:
            raise AssertionError(f"ranks {hung} were still running after {deadline_s}s: {results}")
        return results


def values(results: list[RankResult]) -> list:
    """Every rank's return value; fails with the first rank's traceback when one raised."""
    for res in results:
        if res.error is not None or res.exitcode != 0:
            raise AssertionError(
                f"rank {res.rank} failed (exit {res.exitcode}): {res.traceback or res.error}"
            )
    return [res.value for res in results]
