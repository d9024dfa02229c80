"""Time to first token of a mixture against its best single agent, both served by `mixkit serve`.

One real `mixkit serve` process serves the mixture (a preset, default `gated`) and agents of it
answering alone (generated configs named `single-AGENT`; default: every text agent of its first
layer, so the fastest is among them). After a warm-up request to each (model
loads are not latency), the prompts are sent one at a time, each to every served model in an order
that rotates per prompt, so that all see the same machine load; each stream is read to `[DONE]`.
TTFT is request sent -> first chunk with text, reasoning included (a program agent's program
arrives as `reasoning_content` first); "answer TTFT" is request sent -> first chunk of answer text
(`content`); e2e, the time to the final answer, is request sent -> [DONE].

    python bench/serve_ttft.py                                  # gated vs qwen and smollm, 24 prompts
    python bench/serve_ttft.py --preset self-moa --agent qwen --prompts 12 --max-tokens 64
    python bench/serve_ttft.py --task basic_arithmetic --task chain_sum --prompts 8 --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from mixkit.evals.tasks import Task
from mixkit.moa import load_preset

QUESTIONS = [
    "What is 37 + 58? End with 'Answer: <number>'.",
    "Name the capital of France and one thing it is known for.",
    "Spell the word 'planet' backwards. End with 'Answer: <word>'.",
    "What is 12 * 11? End with 'Answer: <number>'.",
    "Give one reason why the sea is salty.",
    "How many letters 'e' are in 'excellence'? End with 'Answer: <number>'.",
    "Write a Python expression that reverses the string s.",
    "What is 144 divided by 12? End with 'Answer: <number>'.",
    "In one sentence: what does a compiler do?",
    "What is the sum of 5, 9, 13 and 2? End with 'Answer: <number>'.",
    "Sort these words alphabetically: pear, apple, fig. End with 'Answer: <words>'.",
    "What day comes two days after Friday? End with 'Answer: <day>'.",
]


def single_toml(preset: str, agent: str) -> str:
    cfg = load_preset(preset)
    a = cfg.agents[agent].model_dump(
        exclude_none=True, exclude_defaults=True
    )  # program-only fields too
    lines = [f'description = "{agent} of {preset}, alone"', f'aggregator = "{agent}"',
             f"deadline_s = {cfg.deadline_s}", f"[agents.{agent}]"]  # fmt: skip
    lines += [f"{k} = {json.dumps(v)}" for k, v in a.items()]
    return "\n".join(lines) + "\n"


def start_server(port: int, configs: list[Path], home: str) -> subprocess.Popen:
    # No prompt-cache reuse: both served models run Qwen in one process, and the second of a
    # pair would otherwise start from the first's cached prompt.
    env = {**os.environ, "MIXKIT_HOME": home, "PYTHONUNBUFFERED": "1", "MIXKIT_PROMPT_CACHE": "0"}
    cmd = [sys.executable, "-m", "mixkit", "serve", "--port", str(port)]
    cmd += [arg for c in configs for arg in ("-c", str(c))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"mixkit serve did not start: {proc.stderr.read().decode()[-2000:]}")


def ask(client: httpx.Client, model: str, question: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "stream": True, "max_tokens": max_tokens}  # fmt: skip
    start = time.perf_counter()
    first, first_answer, extra = None, None, {}
    with client.stream("POST", "/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"{model}: HTTP {r.status_code}: {r.read().decode()[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
            if delta.get("content") or delta.get("reasoning_content"):
                first = first or time.perf_counter()
            if delta.get("content"):
                first_answer = first_answer or time.perf_counter()
            extra = chunk.get("mixkit") or extra
    end = time.perf_counter()
    gate = extra.get("gate") or {}
    return {"ttft": (first or end) - start, "answer_ttft": (first_answer or end) - start,
            "chosen": ",".join(gate.get("chosen", [])), "e2e": end - start, "calls": len(extra.get("trace", [])),
            "strategy": gate.get("strategy", ""), "early_exit": bool(extra.get("early_exit"))}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gated")
    parser.add_argument("--agent", action="append", default=None,
                        help="a single agent to compare against (repeatable; default: the text agents)")  # fmt: skip
    parser.add_argument("--task", action="append", default=None,
                        help="ask reasoning-gym items of this task (seed 4242, repeatable) instead of QUESTIONS")  # fmt: skip
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="mixkit-ttft-")
    questions = QUESTIONS
    if args.task:  # alternate the tasks: item 0 of each, then item 1 of each ...
        per = -(-args.prompts // len(args.task))
        items = [Task(t, n=per, seed=4242).items() for t in args.task]
        questions = [it[i].prompt for i in range(per) for it in items]
    cfg = load_preset(args.preset)
    first = cfg.layers[0].agents if cfg.layers else [cfg.aggregator]
    agents = args.agent or list(dict.fromkeys(a for a in first if cfg.agents[a].kind == "text"))
    configs = []
    for agent in agents:
        configs.append(Path(home) / f"single-{agent}.toml")
        configs[-1].write_text(single_toml(args.preset, agent))
    proc = start_server(args.port, configs, home)
    models = [args.preset, *(f"single-{a}" for a in agents)]
    results: dict[str, list[dict]] = {m: [] for m in models}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}/v1", timeout=600) as client:
            for model in models:
                ask(client, model, "Say hello.", 8)  # warm-up: load the models
            for i in range(args.prompts):
                q = questions[i % len(questions)]
                order = models[i % len(models) :] + models[: i % len(models)]  # rotate
                for model in order:
                    results[model].append(ask(client, model, q, args.max_tokens))
                    print(f"[{i + 1}/{args.prompts}] {model}: TTFT {results[model][-1]['ttft']:.2f}s",
                          file=sys.stderr)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)
    print(
        f"\n{args.prompts} prompts, max_tokens {args.max_tokens}, interleaved, streams read to the end\n"
    )
    print(
        "| served model | TTFT p50 s | TTFT p90 s | answer TTFT p50 s | e2e p50 s | calls/prompt "
        "| alone | early exit | answered by |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for model, rs in results.items():
        ttft = [r["ttft"] for r in rs]
        alone = sum(r["strategy"] == "alone" for r in rs) / len(rs)
        exits = sum(r["early_exit"] for r in rs) / len(rs)
        chosen = Counter(r["chosen"] for r in rs if r["chosen"])
        print(f"| {model} | {pct(ttft, .5):.2f} | {pct(ttft, .9):.2f} "
              f"| {pct([r['answer_ttft'] for r in rs], .5):.2f} | {pct([r['e2e'] for r in rs], .5):.2f}"
              f" | {statistics.fmean(r['calls'] for r in rs):.2f} | {alone:.0%} | {exits:.0%} "
              f"| {', '.join(f'{k} {v}' for k, v in chosen.most_common()) or '–'} |")  # fmt: skip
    mixed = pct([r["ttft"] for r in results[args.preset]], 0.5)
    for model in models[1:]:
        ratio = mixed / pct([r["ttft"] for r in results[model]], 0.5)
        print(f"\nTTFT p50 ratio {args.preset} / {model}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
