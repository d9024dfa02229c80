"""Which prompt features route better? Text features against two packaged embedders, offline.

Reads scored single-agent answers (`mixkit eval --strategies single --samples S --db FILE`), then
for each feature kind trains a gate on part of the prompts and routes the rest. A routed prompt
earns the real mean score of what the gate chose (an agent alone: its samples' mean score; mix:
the majority vote over the top agent's samples), so no model is called here.

    python bench/gate_features.py --db train.db                 # leave-one-task-out + 4-fold
    python bench/gate_features.py --db train.db --features text wordllama

Columns: routed accuracy; best fixed candidate (one choice for every prompt, picked on the
training part); oracle (the best candidate per prompt, an upper bound); features ms per prompt
(one prompt at a time, one thread, median).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the budget is one core

from mixkit.moa import trace  # noqa: E402
from mixkit.moa.gate import model as g  # noqa: E402
from mixkit.moa.gate.features import extractor  # noqa: E402


def load(db_path: str) -> list[g.ScoredCall]:
    db = trace.connect(db_path)
    rows = trace.eval_items(db)
    db.close()
    return [
        g.ScoredCall(
            r["prompt"],
            r["agent"],
            r["score"],
            r["answer"],
            r["task"],
            r["prompt_tokens"],
            r["completion_tokens"],
        )  # fmt: skip
        for r in rows
    ]


def values(records: list[g.ScoredCall], mix_k: int) -> dict[str, dict[str, float]]:
    """prompt -> candidate -> real score (agents: mean of samples; mix: the vote)."""
    grouped = g._by_prompt(records)
    overall: dict[str, list[float]] = defaultdict(list)
    for r in records:
        overall[r.agent].append(r.score)
    ranking = sorted(overall, key=lambda a: -statistics.fmean(overall[a]))
    out = {}
    for prompt, grp in grouped.items():
        v = {a: statistics.fmean(s.score for s in calls) for a, calls in grp["agents"].items()}
        pool = [s for a in ranking for s in grp["agents"].get(a, [])][:mix_k]
        v[g.MIX] = g.mix_label(pool)
        out[prompt] = v
    return out


def route(
    gate: g.Gate, prompts: list[str], agents: list[str], k: int, cost_weight: float
) -> list[str]:
    """The gate's pick per prompt; mixing costs k calls of the best agent (relative cost 1 each)."""
    slots = [(a, a) for a in agents]
    costs = g.relative_costs(
        {a: gate.expected_tokens(a) for a in agents}, {a: None for a in agents}
    )
    picks = []
    for p in prompts:
        d = gate.decide(p, slots, k=k, cost_weight=cost_weight, costs=costs)
        picks.append(g.MIX if d.strategy == "mix" else d.chosen[0])
    return picks


def evaluate(records, feature: str, split, k: int, cost_weight: float = 0.0):
    """(routed, best fixed, oracle, prompts, share of prompts mixed) over the splits of `split`."""
    vals = values(records, k)
    agents = sorted({r.agent for r in records})
    routed = fixed = oracle = 0.0
    count = mixed = 0
    for train_prompts, test_prompts in split:
        train = [r for r in records if r.prompt in train_prompts]
        if not train or not test_prompts:
            continue
        gate = g.train(train, features=feature, mix_k=k)
        candidates = [*agents, g.MIX]
        best = max(
            candidates, key=lambda c: statistics.fmean(vals[p].get(c, 0.0) for p in train_prompts)
        )
        for p, pick in zip(
            test_prompts, route(gate, test_prompts, agents, k, cost_weight), strict=True
        ):
            mixed += pick == g.MIX
            routed += vals[p].get(pick, 0.0)
            fixed += vals[p].get(best, 0.0)
            oracle += max(vals[p].values())
            count += 1
    return routed / count, fixed / count, oracle / count, count, mixed / count


def splits_by_task(records):
    tasks = defaultdict(set)
    for r in records:
        tasks[r.task].add(r.prompt)
    everything = {r.prompt for r in records}
    return [(everything - ps, sorted(ps)) for _, ps in sorted(tasks.items())]


def splits_by_fold(records, folds: int = 4):
    prompts = sorted({r.prompt for r in records})
    return [
        (
            {p for i, p in enumerate(prompts) if i % folds != f},
            [p for i, p in enumerate(prompts) if i % folds == f],
        )
        for f in range(folds)
    ]


def feature_ms(feature: str, prompts: list[str]) -> float:
    fn = extractor(feature)
    fn(prompts[:2])  # load the model once
    times = []
    for p in prompts[:50]:
        start = time.perf_counter()
        fn([p])
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a log database with `mixkit eval` items")
    parser.add_argument("--features", nargs="+", default=["text", "wordllama", "e5"])
    parser.add_argument("--mix-k", type=int, default=3)
    parser.add_argument(
        "--cost-weights",
        type=float,
        nargs="+",
        default=[0.0],
        help="also route with these cost weights (text features, leave one task out)",
    )
    args = parser.parse_args()
    records = load(args.db)
    prompts = sorted({r.prompt for r in records})
    tasks = sorted({r.task for r in records})
    print(f"{len(records)} scored answers, {len(prompts)} prompts, tasks: {', '.join(tasks)}\n")
    print(
        "| features | split | prompts | routed accuracy | best fixed candidate | oracle | features ms/prompt |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for feature in args.features:
        ms = feature_ms(feature, prompts)
        for name, split in (("leave one task out", splits_by_task(records)),
                            ("4-fold over prompts", splits_by_fold(records))):  # fmt: skip
            routed, fixed, oracle, n, _ = evaluate(records, feature, split, args.mix_k)
            print(
                f"| {feature} | {name} | {n} | {routed:.1%} | {fixed:.1%} | {oracle:.1%} | {ms:.2f} |"
            )
    print("\n| cost weight | routed accuracy | prompts mixed | calls per prompt |")
    print("|---:|---:|---:|---:|")
    for w in args.cost_weights:
        routed, _, _, _, mixed = evaluate(records, "text", splits_by_task(records), args.mix_k, w)
        print(f"| {w:g} | {routed:.1%} | {mixed:.0%} | {1 + (args.mix_k - 1) * mixed:.2f} |")


if __name__ == "__main__":
    main()
