"""End-to-end time of a Mixture-of-Agents run against its critical path, on the embedded models.

The critical path is the sum over layers of the slowest call: no engine can finish sooner with
these calls. What is left (end-to-end minus critical path) is the engine's own overhead: prompt
building, task scheduling, cancellation, writing the trace. Target: end-to-end <= 1.05x the
critical path. TTFT is run start -> first token of the final answer.

    python bench/moa_latency.py                       # moa-tiny and moa-lite, 4 prompts each
    python bench/moa_latency.py --presets self-moa --max-tokens 64

A call's latency includes any wait for CPU threads (local agents share the core budget), so the
critical path already contains that wait; the overhead is purely the engine's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

PROMPTS = [
    "What is 17 * 23? Show the steps briefly.",
    "Give two reasons why the sky looks blue.",
    "Write a Python one-liner that reverses a string.",
    "Name three planets of the solar system and one fact about each.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["moa-tiny", "moa-lite"])
    parser.add_argument("--max-tokens", type=int, default=48, help="max_tokens of every call")
    parser.add_argument("--repeats", type=int, default=1, help="runs per prompt")
    args = parser.parse_args()

    os.environ.setdefault(
        "MIXKIT_HOME", tempfile.mkdtemp(prefix="mixkit-bench-")
    )  # trace writes included
    from mixkit.moa import MoA, load_preset
    from mixkit.moa.providers.local import CORES

    print(f"cores in the local budget: {CORES.total}, max_tokens={args.max_tokens}\n")
    print(
        "| preset | prompt | calls | end-to-end s | critical path s | overhead ms | e2e / critical | TTFT s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for preset in args.presets:
        moa = MoA(load_preset(preset))
        moa.run("Say hello.", max_tokens=4)  # warm-up: model loads are not the engine's latency
        ratios, overheads = [], []
        for prompt in PROMPTS:
            for _ in range(args.repeats):
                start = (
                    time.monotonic()
                )  # outside the engine: event loop setup and trace write count
                a = moa.run(prompt, max_tokens=args.max_tokens)
                wall = time.monotonic() - start
                overhead = wall - a.critical_path_s
                ratio = wall / a.critical_path_s
                ratios.append(ratio)
                overheads.append(overhead)
                print(
                    f"| {preset} | {prompt[:32]} | {len(a.calls)} | {wall:.2f} | {a.critical_path_s:.2f} "
                    f"| {overhead * 1000:.1f} | {ratio:.4f} | {a.ttft_s:.2f} |"
                )
        print(
            f"| **{preset}** | median of {len(ratios)} | | | | **{statistics.median(overheads) * 1000:.1f}** "
            f"| **{statistics.median(ratios):.4f}** (max {max(ratios):.4f}) | |"
        )


if __name__ == "__main__":
    main()
