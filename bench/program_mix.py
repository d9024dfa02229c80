"""The program-agent mixture on two splits, from `mixkit eval --strategies` results (no model calls).

Reads every scored item of the evals in a log database, computes `gated` (the gate's decision on
each prompt, answered by the chosen agent's own single run, evals/replay.py) and `vote-agents`
afresh from the single runs, so a retrained gate is scored on the same answers, and prints per
task and split: each agent alone, the gated mixture, the vote and any other system the evals ran
(e.g. `moa=self-moa`), with standard errors, calls per item, the gate's picks, and the targets of
issue 17 met or missed.

    python bench/program_mix.py --db /work/evalruns/eval.db \\
        --split a=basic_arithmetic,letter_counting,leg_counting,gsm_symbolic \\
        --split b=chain_sum,spell_backward -p gated

A gate that votes over one agent's samples cannot be replayed from single runs (a vote needs
new samples): with `--real-gated SYSTEM` (e.g. `moa=gated`, from `mixkit eval --strategies
moa=gated`), `gated` takes the real run of SYSTEM on the items where the gate voted, and the
replay everywhere else (paired with the single runs, as above); SYSTEM's own column is the real
run on every item (several databases with real runs of the same items: every draw counts,
and so do several single runs of one agent). Where the gate asked its agent until it answered (agree = 1), the column
`gated:first-call` is what answering alone would have scored on the same draws: the run's first
call where it answered, else the fallback agent's single run (the same items, so the difference
between the two columns is what asking again added, without the noise of another draw).
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import statistics
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from mixkit.evals.collect import ItemResult, model_calls
from mixkit.evals.replay import replay_gated, vote_agents, vote_weighted
from mixkit.evals.strategies import Row, summarize
from mixkit.evals.tasks import Item
from mixkit.moa import resolve
from mixkit.moa.gate.model import load


def read_results(db: Path) -> list[ItemResult]:
    """Every scored item in `db`, as ItemResults (failed: the run's outcome was not ok)."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute(
        "SELECT e.*, r.outcome, r.gate_json FROM eval_items e LEFT JOIN runs r ON r.id = e.run_id "
        "ORDER BY e.id"
    ).fetchall()
    # model calls per run, recounted by collect.model_calls from the logged calls (results
    # stored before it existed counted one call per agent call, a program's retries not)
    logged: dict[str, list] = defaultdict(list)
    for run_id, agent, outcome, programs in conn.execute(
        "SELECT run_id, agent, outcome, programs_json FROM calls ORDER BY id"
    ):
        logged[run_id].append(SimpleNamespace(
            agent=agent, outcome=outcome, programs=json.loads(programs) if programs else None
        ))  # fmt: skip
    CALLS.update(logged)
    conn.close()
    calls = {run_id: model_calls(records) for run_id, records in logged.items()}
    out = []
    for r in rows:
        item = Item(r["item"], r["prompt"], r["expected"])
        out.append(ItemResult(
            task=r["task"], item=item, system=r["system"], agent=r["agent"], sample=r["sample"],
            response="", answer=r["answer"], score=r["score"],
            failed=r["outcome"] not in (None, "ok"), run_id=r["run_id"], ttft_s=r["ttft_s"],
            wall_s=r["wall_s"], calls=calls.get(r["run_id"], r["calls"]),
            prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
            cost_usd=r["cost_usd"], gate=json.loads(r["gate_json"]) if r["gate_json"] else None,
        ))  # fmt: skip
    return out


CALLS: dict[str, list] = {}  # run id -> its logged calls (agent, outcome, programs), in order


def first_call_alone(real: ItemResult, singles: dict[str, ItemResult]) -> ItemResult | None:
    """What answering alone would have scored on the same draws as a real run that asked its
    agent until it answered (a vote with agree = 1): the run itself where its first call
    answered (it stopped there); else what alone does after a failed call, the next agent of
    the ranking, taken from that agent's single run. None for runs that did not vote so."""
    gate = real.gate or {}
    if gate.get("strategy") != "votes" or gate.get("agree") != 1 or real.run_id not in CALLS:
        return None
    voted = [c for c in CALLS[real.run_id] if "#" in c.agent]
    if not voted:
        return None
    first_calls = model_calls(voted[:1])
    if voted[0].outcome == "ok":
        return replace(real, system="gated:first-call", calls=first_calls)
    nxt = next((a for a in gate.get("ranking", []) if a != gate["chosen"][0]), None)
    fallback = singles.get(nxt) if nxt else None
    if fallback is None:
        return replace(real, system="gated:first-call", score=0.0, calls=first_calls)
    return replace(fallback, system="gated:first-call", agent=None,
                   calls=first_calls + fallback.calls)  # fmt: skip


def derive(
    results: list[ItemResult], config, gate, real_gated: str | None = None
) -> list[ItemResult]:
    """Single runs and real systems as stored; `gated` and `vote-agents` computed afresh
    (`gated`: where the gate voted, the stored real runs of `real_gated`, every draw of them:
    several databases with real runs of the same items give several draws)."""
    kept = [r for r in results if r.system not in DERIVED]
    real: dict[tuple[str, str], list[ItemResult]] = defaultdict(list)
    for r in kept:
        if r.system == real_gated:
            real[(r.task, r.item.prompt)].append(r)
    order = list(dict.fromkeys(config.layers[0].agents))
    by_item: dict[tuple[str, str], dict[str, ItemResult]] = defaultdict(dict)
    for r in kept:
        if r.agent is not None and r.sample == 0:
            by_item[(r.task, r.item.prompt)].setdefault(r.agent, r)
    derived = []
    for key, singles in by_item.items():
        replayed = replay_gated(config, gate, singles)
        gated, first = [replayed], []
        if replayed is None and key in real:  # a vote: only a real run says what it answers
            gated = [replace(r, system="gated") for r in real[key]]
            first = [first_call_alone(r, singles) for r in real[key]]
        elif replayed is not None and real_gated:
            first = [replace(replayed, system="gated:first-call")]  # alone: the same call
        made_here = (
            *gated,
            *first,
            vote_agents(singles, order),
            vote_weighted(config, gate, singles),
            vote_weighted(config, gate, singles, PAIR, label="vote-weighted:pair"),
            oracle(singles),
        )
        for made in made_here:
            if made is not None:
                derived.append(made)
    return kept + derived


DERIVED = (
    "gated",
    "gated:first-call",
    "vote-agents",
    "vote-weighted",
    "vote-weighted:pair",
    "oracle",
)


def oracle(singles: dict[str, ItemResult]) -> ItemResult | None:
    """The best single run of the item: what a perfect gate would score (a ceiling, not a
    strategy: it knows the answers)."""
    if not singles:
        return None
    best = max(singles.values(), key=lambda r: r.score)
    return replace(best, system="oracle", agent=None)


PAIR = ["qwen", "qwen-program"]  # the two agents the aggregate combiner reads


def combiners(results: list[ItemResult], system: str) -> None:
    """Aggregate combiner (a real MoA of PAIR + aggregator) against the gate-weighted vote of
    the same pair's single answers, on the items where the pair agreed and where it disagreed."""
    agg = {(r.task, r.item.prompt): r for r in results if r.system == system}
    if not agg:
        return
    pair = {(r.task, r.item.prompt): r for r in results if r.system == "vote-weighted:pair"}
    singles = defaultdict(dict)
    for r in results:
        if r.agent in PAIR and r.sample == 0:
            singles[(r.task, r.item.prompt)][r.agent] = r
    print(f"\nCombiners on the items `{system}` ran (n = {len(agg)}):\n")
    print("| items | n | aggregate | gate-weighted vote | calls/item aggregate | calls/item vote |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, want in (("pair agreed", True), ("pair disagreed", False), ("all", None)):
        keys = [k for k in agg if k in pair and (want is None or
                (singles[k][PAIR[0]].answer == singles[k][PAIR[1]].answer) == want)]  # fmt: skip
        if not keys:
            continue
        a = statistics.fmean(agg[k].score for k in keys)
        v = statistics.fmean(pair[k].score for k in keys)
        ca = statistics.fmean(agg[k].calls for k in keys)
        cv = statistics.fmean(pair[k].calls for k in keys)
        print(f"| {name} | {len(keys)} | {a:.1%} | {v:.1%} | {ca:.2f} | {cv:.2f} |")


def cell(r: Row | None) -> str:
    """Accuracy ± its standard error; (n) where fewer items than the task's."""
    return "–" if r is None else f"{r.accuracy:.1%} ± {r.se:.1%}"


def split_table(name: str, tasks: list[str], rows: list[Row], strategies: list[str]) -> dict:
    """Print one split's Markdown table; return the split's mean per strategy and its SE."""
    get = {(r.task, r.strategy): r for r in rows}
    print(f"\nSplit ({name}):\n")
    print("| task | n | " + " | ".join(strategies) + " |")
    print("|---|---:" + "|---:" * len(strategies) + "|")
    for t in tasks:
        n = get[(t, "gated")].n if (t, "gated") in get else 0
        print(f"| {t} | {n} | " + " | ".join(cell(get.get((t, s))) for s in strategies) + " |")
    means = {}
    for s in strategies:
        got = [get[(t, s)] for t in tasks if (t, s) in get]
        if len(got) == len(tasks):
            mean = statistics.fmean(r.accuracy for r in got)
            se = math.sqrt(sum(r.se**2 for r in got)) / len(got)
            means[s] = (mean, se)
    print("| **mean** | | " + " | ".join(
        f"**{means[s][0]:.1%}** ± {means[s][1]:.1%}" if s in means else "–" for s in strategies
    ) + " |")  # fmt: skip
    calls = [
        f"{statistics.fmean(get[(t, s)].calls for t in tasks if (t, s) in get):.2f}"
        if any((t, s) in get for t in tasks) else "–" for s in strategies
    ]  # fmt: skip
    print("| calls/item | | " + " | ".join(calls) + " |")
    return means


def targets(name: str, tasks: list[str], rows: list[Row], singles: list[str], means: dict) -> None:
    get = {(r.task, r.strategy): r for r in rows}
    gated = means.get("gated")
    best = max((s for s in singles if s in means), key=lambda s: means[s][0], default=None)
    if gated is None or best is None:
        return
    print(f"\nSplit ({name}): gated {gated[0]:.1%} vs best single agent {best} {means[best][0]:.1%}"
          f" (difference {100 * (gated[0] - means[best][0]):+.1f} points)")  # fmt: skip
    for t in tasks:
        best_t = max(singles, key=lambda s: get[(t, s)].accuracy if (t, s) in get else -1)
        g, b = get[(t, "gated")], get[(t, best_t)]
        ok = g.accuracy >= b.accuracy - max(g.se, b.se)
        print(f"- {t}: gated {g.accuracy:.1%} vs best {best_t} {b.accuracy:.1%}: "
              f"{'within/above' if ok else 'BELOW'} one SE")  # fmt: skip


def picks(results: list[ItemResult], tasks: list[str]) -> None:
    print("\nThe gate's picks (alone: agent; fallbacks after a failed program):\n")
    for t in tasks:
        got: Counter = Counter()
        for r in results:
            if r.task == t and r.system == "gated" and r.gate:
                what = {"alone": r.gate["chosen"][0], "votes": f"votes:{r.gate['chosen'][0]}"}
                got[what.get(r.gate["strategy"], "mix")] += 1
                got["fallback"] += bool(r.gate.get("fallbacks"))
        print(f"- {t}: " + ", ".join(f"{k} {v}" for k, v in got.most_common()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=Path, action="append", required=True)
    ap.add_argument("--split", action="append", required=True, help="NAME=task,task,...")
    ap.add_argument("-p", "--preset", default="gated")
    ap.add_argument("-c", "--config", type=Path, default=None)
    ap.add_argument("--gate", default=None, help="a gate file instead of the config's")
    ap.add_argument("--real-gated", default=None, help="stored real runs to use as `gated`")
    args = ap.parse_args()
    config = resolve(None if args.config else args.preset, args.config)
    assert config.gate is not None, "the mixture needs a [gate]"
    gate = load(args.gate or config.gate.path)
    results = derive([r for db in args.db for r in read_results(db)], config, gate, args.real_gated)
    rows = summarize(results)
    singles = sorted({f"single:{r.agent}" for r in results if r.agent})
    others = sorted({r.system for r in results if r.agent is None} - set(DERIVED))
    firsts = ["gated:first-call"] if any(r.system == "gated:first-call" for r in results) else []
    strategies = [*singles, "gated", *firsts, "vote-agents", "vote-weighted", *others, "oracle"]
    for spec in args.split:
        name, _, names = spec.partition("=")
        tasks = [t for t in names.split(",") if t]
        means = split_table(name, tasks, rows, strategies)
        targets(name, tasks, rows, singles, means)
        picks(results, tasks)
    ran = {(r.task, r.item.prompt) for r in results if r.system in others}
    if ran:  # the same comparison on the items the mixtures ran, so every column has one n
        subset = summarize([r for r in results if (r.task, r.item.prompt) in ran])
        for spec in args.split:
            name, _, names = spec.partition("=")
            split_table(f"{name}, the items the mixtures ran", [t for t in names.split(",") if t],
                        subset, strategies)  # fmt: skip
    for system in others:
        if "program-aggregate" in system:
            combiners(results, system)


if __name__ == "__main__":
    main()
