"""End-to-end time of a Mixture-of-Agents run against its critical path, on the embedded models.

The critical path is the sum over layers of the slowest call: no engine can finish sooner with
these calls. What is left (end-to-end minus critical path) is the engine's own overhead: prompt
building, task scheduling, cancellation, writing the trace. Target: end-to-end <= 1.05x the
critical path. TTFT is run start -> first token of the final answer.

    python bench/moa_latency.py                       # moa-tiny and moa-lite, 4 prompts each
    python bench/moa_latency.py --presets self-moa --max-tokens 64
    python bench/moa_latency.py --threads              # also: split the cores vs take turns

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
    parser.add_argument("--threads", action="store_true", help="also compare split vs serial cores")
    args = parser.parse_args()

    os.environ.setdefault(
        "MIXKIT_HOME", tempfile.mkdtemp(prefix="mixkit-bench-")
    )  # trace writes included
    from mixkit.moa import MoA, load_preset
    from mixkit.moa.agents.providers.local import CORES

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
    if args.threads:
        thread_split(["smollm2-135m", "qwen2.5-coder-0.5b"], args.max_tokens)


def thread_split(models: list[str], max_tokens: int) -> None:
    """A layer of 3 local calls on the core budget: split the cores, or take turns with all of them."""
    import asyncio

    from mixkit.moa.agents.providers.base import Sampling, Usage
    from mixkit.moa.agents.providers.local import CORES, LocalProvider

    async def call(provider, prompt: str, threads: int) -> int:
        usage = Usage()
        sampling = Sampling(max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=0)
        async for _ in provider.stream(
            [{"role": "user", "content": prompt}], sampling, usage, threads=threads
        ):
            pass
        return usage.completion_tokens or 0

    async def layer(provider, threads: int, concurrent: bool) -> tuple[float, int]:
        prompts = [f"Write a short story about a {w}." for w in ("cat", "ship", "tree")]
        start = time.monotonic()
        if concurrent:
            tokens = await asyncio.gather(*(call(provider, p, threads) for p in prompts))
        else:
            tokens = [await call(provider, p, threads) for p in prompts]
        return time.monotonic() - start, sum(tokens)

    print(f"\n3 concurrent local calls, {CORES.total} cores, max_tokens={max_tokens}, greedy\n")
    print("| model | schedule | layer wall s | tokens | tokens/s |")
    print("|---|---|---:|---:|---:|")
    for model in models:
        provider = LocalProvider(model)
        asyncio.run(layer(provider, 1, True))  # warm-up: load one instance per concurrent call
        for name, threads, concurrent in (
            (
                f"split: {max(1, CORES.total // 3)} thread(s) each, concurrent",
                max(1, CORES.total // 3),
                True,
            ),
            (f"serial: {CORES.total} threads, one at a time", CORES.total, False),
        ):
            wall, tokens = asyncio.run(layer(provider, threads, concurrent))
            print(f"| {model} | {name} | {wall:.2f} | {tokens} | {tokens / wall:.1f} |")


if __name__ == "__main__":
    main()
