"""Do the first-token mitigations pay? A MoA plain, with early exit, and with staircase streaming.

Two setups, each run interleaved (the modes rotate per prompt) on the same prompts:
- local: the `self-moa` preset (3 Qwen proposers + a Qwen aggregator, in-process llama.cpp), so
  proposers and aggregator compete for this machine's cores;
- remote: the same shape over the fake OpenAI backend (`mixkit.testing`) with a set per-token
  latency, as agents behind a network would be; the cores are free.

    python bench/moa_mitigations.py                      # both, 6 prompts, max_tokens 64
    python bench/moa_mitigations.py --setups remote --prompts 20

Early exit (2 proposals with the same final answer, or 70% word overlap) skips the aggregator;
the table shows how often it fired. The remote proposers write distinct words and end in a final
answer that two of the three share, as on a checkable task.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("MIXKIT_HOME", tempfile.mkdtemp(prefix="mixkit-stairs-"))

from mixkit.moa import MoA, load_preset, parse_config  # noqa: E402
from mixkit.moa.agents.providers.local import POOL  # noqa: E402
from mixkit.moa.config import EarlyExitConfig, StaircaseConfig  # noqa: E402
from mixkit.testing import FakeBackend  # noqa: E402

PROMPTS = [
    "Why is the sea salty? Answer in three sentences.",
    "Explain what a compiler does, briefly.",
    "Give two reasons why the sky looks blue.",
    "What is 17 * 23? Show the steps briefly.",
    "Name three planets and one fact about each.",
    "Why do leaves change colour in autumn?",
]


def remote_config(url: str, words: int) -> dict:
    """Three proposers writing `words` distinct words each, ending in a final answer on which
    two of them agree (as on a checkable task), and an aggregator."""
    finals = ["Answer: 42", "Answer: 42", "Answer: 41"]
    texts = [" ".join(f"w{i}x{j}" for j in range(words)) + f" {finals[i]}" for i in range(3)]
    agents = {
        f"p{i}": {"provider": "openai", "base_url": url, "model": f"ok:{texts[i]}"}
        for i in range(3)
    }
    agents["agg"] = {"provider": "openai", "base_url": url, "model": "agg"}
    return {"name": "remote-moa", "aggregator": "agg", "agents": agents,
            "layers": [{"agents": ["p0", "p1", "p2"]}]}  # fmt: skip


def modes(cfg) -> dict[str, MoA]:
    return {
        "plain": MoA(cfg),
        "early exit": MoA(cfg.model_copy(update={"early_exit": EarlyExitConfig()})),
        "staircase": MoA(cfg.model_copy(update={"staircase": StaircaseConfig()})),
    }


def measure(moas: dict[str, MoA], prompts: list[str], max_tokens: int) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in moas}
    names = list(moas)
    for i, prompt in enumerate(prompts):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order
            a = moas[name].run(prompt, max_tokens=max_tokens)
            out[name].append((a.ttft_s, a.wall_s, len(a.calls), a.early_exit is not None))
    return out


def report(setup: str, res: dict[str, list]) -> None:
    p50 = {k: statistics.median(r[0] for r in v) for k, v in res.items()}
    for name, rows in res.items():
        e2e = statistics.median(r[1] for r in rows)
        calls = statistics.fmean(r[2] for r in rows)
        exits = sum(r[3] for r in rows) / len(rows)
        ratio = p50[name] / p50["plain"]
        print(f"| {setup} | {name} | {len(rows)} | {p50[name]:.2f} | {ratio:.2f}x | {e2e:.2f} "
              f"| {calls:.1f} | {exits:.0%} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=["local", "remote"])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    POOL.reuse_prefix = True  # the staircase's growing prompt is meant to reuse the KV cache
    stairs_rule = StaircaseConfig()
    print(f"staircase: chunk_chars {stairs_rule.chunk_chars}, step_tokens {stairs_rule.step_tokens}; "
          f"max_tokens {args.max_tokens}\n")  # fmt: skip
    print(
        "| setup | mode | prompts | TTFT p50 s | TTFT / plain | e2e p50 s | calls | early exits |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    if "local" in args.setups:
        moas = modes(load_preset("self-moa"))
        moas["plain"].run("Say hi.", max_tokens=4)  # load the models once
        report("local self-moa", measure(moas, prompts, args.max_tokens))
    if "remote" in args.setups:
        with FakeBackend(ttft=0.3, gap=0.03, tokens=args.max_tokens) as backend:
            moas = modes(parse_config(remote_config(backend.url, args.max_tokens)))
            report("remote (fake, 0.3 s + 0.03 s/token)", measure(moas, prompts, args.max_tokens))


if __name__ == "__main__":
    main()
