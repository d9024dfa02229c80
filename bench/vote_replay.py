"""What other stopping rules would have scored on the calls a real voting run made (no model calls).

A gated run that asked its agent again and again records every call (`mixkit eval --strategies
moa=gated --db ...`): what each program printed, or that it failed. Replayed in order, those
calls say what the run would have answered had it stopped earlier. Per task, over the items where
the gate voted: the run as it was, and "stop at the first answer" (agree = 1), each with its
accuracy and model calls per item (a program's retry counts as a call).

    python bench/vote_replay.py --db eval-votes.db --seed 7 -n 40

The items are regenerated from reasoning-gym with the eval's seed and size, to score each call.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
from collections import defaultdict
from types import SimpleNamespace

from mixkit.evals.tasks import Task, answer_key, score_answer
from mixkit.moa.agents.agent import model_calls


def calls_of(conn: sqlite3.Connection, run_id: str) -> list[dict]:
    """The run's calls in order: agent, answered (outcome ok), reply, model calls it made."""
    out = []
    rows = conn.execute(
        "SELECT agent, outcome, response, programs_json FROM calls WHERE run_id = ? ORDER BY id",
        (run_id,),
    )
    for agent, outcome, response, programs in rows:
        made = model_calls([SimpleNamespace(programs=json.loads(programs) if programs else None)])
        out.append({"agent": agent, "ok": outcome == "ok", "reply": response or "", "calls": made})
    return out


def first_answer(calls: list[dict]) -> tuple[float, int]:
    """(score, model calls) had the run stopped at its first call that answered."""
    spent = 0
    for c in calls:
        spent += c["calls"]
        if c["key"] is not None:
            return c["score"], spent
    return (calls[-1]["score"] if calls else 0.0), spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--system", default="moa=gated")
    ap.add_argument("--seed", type=int, required=True, help="the eval's --seed")
    ap.add_argument("-n", type=int, required=True, help="the eval's -n")
    args = ap.parse_args()
    conn = sqlite3.connect(args.db)
    rows = conn.execute(
        "SELECT e.task, e.item, e.score, e.calls, e.run_id, r.gate_json FROM eval_items e "
        "JOIN runs r ON r.id = e.run_id WHERE e.system = ? ORDER BY e.id",
        (args.system,),
    ).fetchall()
    items: dict[str, list] = {}
    got: dict[str, list] = defaultdict(list)
    for task, index, score, _, run_id, gate_json in rows:
        if json.loads(gate_json or "{}").get("strategy") != "votes":
            continue
        if task not in items:
            items[task] = Task(task, args.n, args.seed).items()
        item = items[task][index]
        calls = calls_of(conn, run_id)
        for c in calls:  # the key two answers share (a program's printed answer, normalised)
            c["key"] = answer_key(c["reply"]) if c["ok"] else None
            c["score"] = score_answer(c["reply"], item) if c["ok"] else 0.0
        got[task].append((score, sum(c["calls"] for c in calls), *first_answer(calls)))
    print("| task | voted items | as run | calls/item | stop at the first answer | calls/item |")
    print("|---|---:|---:|---:|---:|---:|")
    for task, rs in got.items():
        mean = [statistics.fmean(r[i] for r in rs) for i in range(4)]
        print(f"| {task} | {len(rs)} | {mean[0]:.1%} | {mean[1]:.2f} | {mean[2]:.1%} | "
              f"{mean[3]:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
