"""Expert-parallel MoE benchmark: one forward+backward step on 1, 2 and 4 CPU ranks (gloo).

The ranks are started by `mixkit.testing.ranks.run_ranks` (spawned processes, a file://
rendezvous in a temporary folder, gloo over loopback; --threads torch threads per rank). Every world size runs the same global batch
(strong scaling): T_global tokens split evenly, rank r holding tokens [r*T/R, (r+1)*T/R) and experts
[r*E/R, (r+1)*E/R) after `mixkit.moe.parallel.shard_experts`. The 1-rank row is the plain
single-process layer (no shard_experts, no process group, no collectives): the baseline.

    python bench/moe_parallel.py                   # T=4096, d_model=256, d_hidden=512, E=16, k=2
    python bench/moe_parallel.py --quick           # a tiny problem: ~10 s, mostly process start-up
    python bench/moe_parallel.py --worlds 1,2 --tokens 8192 --experts 32 --repeats 20
    python bench/moe_parallel.py --weak            # T_global = --tokens per rank x world size
    python bench/moe_parallel.py --sharded-baseline  # add a 1-rank row that runs the EP code path

Columns (times are per step, averaged over the ranks of the repeat whose step time is the median):
- ms/step: wall time of zero_grad + forward + loss + backward, after a barrier, median of
  --repeats timed steps (after --warmup untimed ones).
- all_to_all ms: time inside every `all_to_all` (token counts, dispatch and combine, forward and
  backward), from `mixkit.distributed.record_comm()`. A collective also waits for the slowest
  peer, so load imbalance and CPU contention show up here, not only bytes on the wire.
- other coll. ms: every other mixkit collective (the all_reduce of the balancing-loss statistics,
  forward and backward, and the all_gather of the token counts).
- rest ms: ms/step minus the two: routing, permutations, expert FFNs, loss, autograd.
- CPU ms/rank: the rank process's CPU time during the step (all its threads, gloo's included).
  Well below ms/step means the rank waited: for a peer, or for a core (another process).
- a2a MB/rank, a2a MB total: bytes handed to all_to_all per step (what record_comm counts: the
  input tensor of each all_to_all_single, including the rows a rank keeps for its own experts),
  mean over ranks and summed over ranks. off-rank %: the part that leaves the rank (last step).
- calls/step: collective calls per rank per step, by kind.

After the table the script checks the all_to_all bytes against the formula
    2 (dispatch + combine) x 2 (forward + backward) x A x d_model x bytes per element
    + 2 x A x bytes per element          (the gate weight rides along as an extra dispatch column)
    + R x E x 8                          (the per-expert int64 counts, forward only)
    [+ A x 8 with a capacity factor: the priority keys of the capacity rule]
with A the assignments of the whole group's batch (k x T_global for token choice).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# Same as bench/moe_layer.py: transparent huge pages for large CPU tensors, read once by torch at
# start-up. The spawned ranks inherit the environment (and re-run this block anyway).
if "--no-thp" not in sys.argv:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mixkit import distributed as mdist  # noqa: E402
from mixkit.moe import MoE  # noqa: E402
from mixkit.moe.parallel import shard_experts  # noqa: E402
from mixkit.testing.ranks import RanksFailed, run_ranks, values  # noqa: E402

A2A = "all_to_all"


# --- inside each rank ---------------------------------------------------------------------------
def _measure(rank: int, world: int, opts: dict) -> dict:
    """One rank's measurements; started by mixkit.testing.ranks.run_ranks (with a gloo group
    when the row is sharded)."""
    parallel = dist.is_initialized()
    T_global, D, H, E, k = (opts[n] for n in ("tokens", "d_model", "d_hidden", "experts", "k"))
    torch.manual_seed(0)  # identical layers on every rank, as shard_experts requires
    layer = MoE(D, H, E, k=k, router=opts["router"], capacity_factor=opts["capacity_factor"])
    layer.train()
    if parallel:
        shard_experts(layer)
    T = T_global // world
    g = torch.Generator().manual_seed(1234)  # the same global batch for every world size
    x = torch.randn(T_global, D, generator=g)[rank * T : (rank + 1) * T].clone().requires_grad_()
    torch.manual_seed(1000 + rank)  # router noise: each rank draws its own

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y = layer(x)
        # each rank's aux_loss covers the whole group's batch: the group's total counts it once
        loss = (y * y).mean() + layer.aux_loss / world
        loss.backward()

    for _ in range(opts["warmup"]):
        step()
    out = {"step": [], "cpu": [], "a2a": [], "other": [], "a2a_bytes": [], "other_bytes": []}
    for _ in range(opts["repeats"]):
        if parallel:
            dist.barrier()  # start together; not a mixkit collective, so not recorded
        with mdist.record_comm() as rec:
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        out["step"].append(elapsed)
        out["cpu"].append(cpu)
        out["a2a"].append(rec.seconds.get(A2A, 0.0))
        out["other"].append(rec.total_seconds - rec.seconds.get(A2A, 0.0))
        out["a2a_bytes"].append(rec.bytes_sent.get(A2A, 0))
        out["other_bytes"].append(rec.total_bytes - rec.bytes_sent.get(A2A, 0))
        out["calls"] = dict(rec.calls)
    decision = layer.last_decision
    expert_A = decision.expert_idx_A
    out["assignments"] = int(expert_A.numel())
    El = E // world
    out["remote_assignments"] = int((expert_A // El != rank).sum())
    out["dropped"] = float(layer.last_stats.dropped_fraction)
    out["element_size"] = x.element_size()
    out["expert_choice"] = bool(decision.expert_choice)
    out["cpu_affinity"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return out


# --- the parent -----------------------------------------------------------------------------------
def run_world(world: int, opts: dict, sharded: bool) -> list[dict]:
    """Spawn `world` ranks, return each rank's measurements (rank order)."""
    results = run_ranks(
        _measure,
        world,
        timeout_s=opts["timeout"],
        deadline_s=opts["deadline"],
        threads=opts["threads"],
        process_group=sharded,
        opts=opts,
    )
    try:
        return values(results)
    except RanksFailed as e:
        raise SystemExit(f"{world} ranks failed: {e}") from None


def summarize(world: int, ranks: list[dict], opts: dict, sharded: bool) -> dict:
    repeats = len(ranks[0]["step"])

    def mean_over_ranks(key: str, i: int) -> float:
        return statistics.fmean(r[key][i] for r in ranks)

    per_repeat = [
        {key: mean_over_ranks(key, i) for key in ("step", "cpu", "a2a", "other")}
        for i in range(repeats)
    ]
    order = sorted(range(repeats), key=lambda i: per_repeat[i]["step"])
    med = per_repeat[order[len(order) // 2]]
    slowest = [max(r["step"][i] for r in ranks) for i in range(repeats)]
    a2a_bytes = [b for r in ranks for b in r["a2a_bytes"]]  # every rank, every repeat
    totals = {sum(r["a2a_bytes"][i] for r in ranks) for i in range(repeats)}
    assignments = sum(r["assignments"] for r in ranks)
    remote = sum(r["remote_assignments"] for r in ranks) if sharded else 0
    D, E = opts["d_model"], opts["experts"]
    elt = ranks[0]["element_size"]
    limited = opts["capacity_factor"] is not None and not ranks[0]["expert_choice"]
    # off-rank bytes: dispatch rows (D+1 columns) and their gradients, combine rows (D columns)
    # and their gradients, for every assignment whose expert lives elsewhere; plus the counts.
    off_rank = remote * (2 * (D + 1) + 2 * D) * elt + world * (world - 1) * (E // world) * 8
    if limited:
        off_rank += remote * 8
    return {
        "world": world,
        "sharded": sharded,
        "tokens_per_rank": opts["tokens"] // world,
        "experts_per_rank": E // world if sharded else E,
        "step": med["step"],
        "a2a": med["a2a"],
        "other": med["other"],
        "rest": med["step"] - med["a2a"] - med["other"],
        "cpu": med["cpu"],
        "step_min": min(p["step"] for p in per_repeat),
        "step_max": max(p["step"] for p in per_repeat),
        "slowest_median": statistics.median(slowest),
        "a2a_bytes_rank": statistics.fmean(a2a_bytes),
        "a2a_bytes_rank_range": (min(a2a_bytes), max(a2a_bytes)),
        "a2a_bytes_total": max(totals),
        "a2a_bytes_total_constant": len(totals) == 1,
        "other_bytes_total": sum(r["other_bytes"][-1] for r in ranks),
        "off_rank_bytes": off_rank if sharded else 0,
        "calls": ranks[0]["calls"],
        "calls_same": all(r["calls"] == ranks[0]["calls"] for r in ranks),
        "assignments": assignments,
        "element_size": elt,
        "limited": limited,
        "dropped": ranks[0]["dropped"],
    }


_SHORT = {
    "all_to_all": "a2a",
    "all_reduce": "all_reduce",
    "all_gather of token counts": "all_gather",
    "all_gather of router probabilities": "all_gather probs",
}


def fmt_calls(calls: dict) -> str:
    if not calls:
        return "0"
    parts = [f"{_SHORT.get(name, name)} {n}" for name, n in sorted(calls.items())]
    return f"{sum(calls.values())} ({', '.join(parts)})"


def fmt_table(rows: list[dict], cpus: int) -> str:
    base = next((r for r in rows if r["world"] == 1 and not r["sharded"]), None)
    lines = [
        "| ranks | tokens/rank | experts/rank | ms/step (min–max) | speedup vs 1 | all_to_all ms "
        "| other coll. ms | rest ms | all_to_all % | CPU ms/rank | a2a MB/rank | a2a MB total | off-rank % "
        "| calls/step per rank |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    mb = 1e6
    for r in rows:
        label = str(r["world"])
        if r["world"] == 1:
            label += " (EP code path)" if r["sharded"] else " (plain layer)"
        if r["world"] > cpus:
            label += " †"
        speedup = f"{base['step'] / r['step']:.2f}×" if base else "n/a"
        total = r["a2a_bytes_total"]
        off = f"{100 * r['off_rank_bytes'] / total:.0f}" if total else "–"
        lines.append(
            f"| {label} | {r['tokens_per_rank']} | {r['experts_per_rank']} | "
            f"{r['step'] * 1e3:.1f} ({r['step_min'] * 1e3:.1f}–{r['step_max'] * 1e3:.1f}) | "
            f"{speedup} | {r['a2a'] * 1e3:.1f} | {r['other'] * 1e3:.2f} | {r['rest'] * 1e3:.1f} | "
            f"{100 * r['a2a'] / r['step']:.0f} | {r['cpu'] * 1e3:.0f} | "
            f"{r['a2a_bytes_rank'] / mb:.2f} | "
            f"{r['a2a_bytes_total'] / mb:.2f} | {off} | {fmt_calls(r['calls'])} |"
        )
    return "\n".join(lines)


def bytes_check(r: dict, opts: dict) -> str:
    """The recorded all_to_all bytes against the closed formula (see the module docstring)."""
    A, R, elt = r["assignments"], r["world"], r["element_size"]
    D, E = opts["d_model"], opts["experts"]
    rows = 2 * 2 * A * D * elt
    weight = 2 * A * elt
    counts = R * E * 8
    keys = A * 8 if r["limited"] else 0
    expected = rows + weight + counts + keys
    got = r["a2a_bytes_total"]
    lo, hi = r["a2a_bytes_rank_range"]
    verdict = "OK" if got == expected else f"MISMATCH (off by {got - expected:+d} B)"
    keys_txt = f" + keys {keys}" if keys else ""
    return (
        f"{R} ranks: all_to_all bytes/step, all ranks = {got} B; formula 2·2·A·D·{elt} = "
        f"2·2·{A}·{D}·{elt} = {rows} + gate-weight column 2·A·{elt} = {weight} + counts "
        f"R·E·8 = {counts}{keys_txt} = {expected} -> {verdict} (rows alone: {got / rows:.4f}×; "
        f"per rank {lo}–{hi} B over all steps)"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a tiny problem and few repeats (seconds)")
    p.add_argument("--worlds", default="1,2,4", help="comma-separated rank counts (default 1,2,4)")
    p.add_argument("--tokens", type=int, default=4096, help="global tokens per step (T_global)")
    p.add_argument("--weak", action="store_true", help="--tokens per rank instead (weak scaling)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-hidden", type=int, default=512)
    p.add_argument("--experts", type=int, default=16, help="E (divisible by every world size)")
    p.add_argument("-k", type=int, default=2)
    p.add_argument("--router", default="noisy_topk")
    p.add_argument("--capacity-factor", type=float, default=None, help="default: dropless")
    p.add_argument("--repeats", type=int, default=30, help="timed steps per world size (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument(
        "--sharded-baseline",
        action="store_true",
        help="also run 1 rank through shard_experts (the EP code path, all_to_all to itself)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="collective timeout (s)")
    p.add_argument("--deadline", type=float, default=600.0, help="kill a world size after (s)")
    p.add_argument("--no-thp", action="store_true", help="do not enable THP_MEM_ALLOC_ENABLE")
    args = p.parse_args()
    if args.quick:
        args.tokens, args.d_model, args.d_hidden = 256, 64, 128
        args.experts = 8
        args.repeats, args.warmup = 3, 1
    args.worlds = [int(w) for w in args.worlds.split(",") if w.strip()]
    for w in args.worlds:
        if args.experts % w:
            p.error(f"--experts {args.experts} is not divisible by world size {w}")
        if not args.weak and args.tokens % w:
            p.error(f"--tokens {args.tokens} is not divisible by world size {w}")
    return args


def header(args: argparse.Namespace, cpus: int) -> str:
    limit = (
        "dropless" if args.capacity_factor is None else f"capacity factor {args.capacity_factor}"
    )
    return (
        f"torch {torch.__version__}, gloo over loopback, {args.threads} thread(s) per rank, "
        f"{cpus} CPU(s), fp32, k={args.k}, router={args.router}, {limit}, "
        f"d_model={args.d_model}, d_hidden={args.d_hidden}, E={args.experts}, "
        f"{'T per rank' if args.weak else 'T_global'}={args.tokens}, "
        f"median of {args.repeats} steps after {args.warmup} warm-up, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}, "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )


def notes(rows: list[dict], threads: int, cpus: int) -> list[str]:
    """What a reader should know about the rows: changing bytes or calls, drops, stragglers."""
    out = []
    for r in rows:
        if not r["a2a_bytes_total_constant"]:
            out.append(f"note: {r['world']} ranks: all_to_all bytes per step changed between steps")
        if not r["calls_same"]:
            out.append(f"note: {r['world']} ranks made different numbers of calls per rank")
        if r["dropped"] > 0:
            out.append(
                f"note: {r['world']} rank(s) dropped {100 * r['dropped']:.1f} % of assignments"
            )
        if r["world"] > 1 and r["slowest_median"] > 1.05 * r["step"]:
            out.append(
                f"note: {r['world']} ranks: the slowest rank's median step is "
                f"{r['slowest_median'] * 1e3:.1f} ms (rank mean {r['step'] * 1e3:.1f} ms)"
            )
    over = sorted({r["world"] for r in rows if r["world"] * threads > cpus})
    if over:
        out.append(
            f"† {', '.join(map(str, over))} ranks × {threads} thread(s) oversubscribe the "
            f"{cpus} CPU core(s) of this machine: ranks time-share cores, so their rows measure "
            "contention (and collectives wait for descheduled peers), not scaling."
        )
    return out


def main() -> None:
    args = parse_args()
    cpus = os.cpu_count() or 1
    print(header(args, cpus), flush=True)
    base_opts = {
        name: getattr(args, name)
        for name in (
            "d_model", "d_hidden", "experts", "k", "router", "capacity_factor",
            "repeats", "warmup", "threads", "timeout", "deadline",
        )
    }  # fmt: skip
    plan = [(w, w > 1) for w in args.worlds]
    if args.sharded_baseline and 1 in args.worlds:
        plan.insert(args.worlds.index(1) + 1, (1, True))
    rows, opts_by_row = [], []
    t_start = time.perf_counter()
    for world, sharded in plan:
        opts = dict(base_opts, tokens=args.tokens * world if args.weak else args.tokens)
        rows.append(summarize(world, run_world(world, opts, sharded), opts, sharded))
        opts_by_row.append(opts)
        print(f"  {world} rank(s){' (sharded)' if sharded else ''}: done", file=sys.stderr)
    print()
    print(fmt_table(rows, cpus))
    print()
    for r, opts in zip(rows, opts_by_row, strict=True):
        if r["sharded"]:
            print(bytes_check(r, opts))
    for line in notes(rows, args.threads, cpus):
        print(line)
    print(
        f"(wall {time.perf_counter() - t_start:.0f} s; load average at the end "
        f"{os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
