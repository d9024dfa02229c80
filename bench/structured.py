"""What structured output costs, and what the repair buys, on the embedded models.

1. Constraining: each local model answers the same JSON-schema prompts with and without its
   llama.cpp grammar, interleaved (grammar, free, grammar, ...) in one process, with the prompt
   cache off so both pay their whole prompt. TTFT is call start -> first piece; decode tokens/s is
   completion tokens / (latency - TTFT). Both see the schema in the prompt (as the engine shows it).
2. Repair: the free answers are what an unconstrained agent (a remote model that ignores
   response_format) would send. Each is checked with the engine's validator; an invalid one gets
   the engine's one repair call (the validation error shown to the model), still unconstrained;
   the valid rate is reported before and after.

    MIXKIT_THREADS=2 python bench/structured.py                       # qwen and smollm, 10 prompts
    python bench/structured.py --models qwen2.5-coder-0.5b --max-tokens 96
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

os.environ["MIXKIT_PROMPT_CACHE"] = "0"  # read when the model pool is made, at import

from enum import Enum  # noqa: E402

from pydantic import BaseModel, Field  # noqa: E402

from mixkit.moa import AgentConfig  # noqa: E402
from mixkit.moa.agents.agent import Agent, CallOptions, CallRecord  # noqa: E402
from mixkit.moa.agents.providers.base import Constraint  # noqa: E402
from mixkit.moa.engine.output import json_howto, repair_prompt, with_instruction  # noqa: E402
from mixkit.moa.engine.structured import check_answer  # noqa: E402

SUBJECTS = ["a banana", "Paris", "a violin", "a kangaroo", "a bicycle", "Tokyo", "a mango",
            "a giant panda", "a piano", "a yellow taxi"]  # fmt: skip
ASK = "Describe {} as JSON: its name, its kind, where it comes from, and up to three tags."


class Kind(str, Enum):
    animal = "animal"
    fruit = "fruit"
    city = "city"
    vehicle = "vehicle"
    instrument = "instrument"


class Origin(BaseModel):
    country: str
    continent: str


class Thing(BaseModel):
    name: str
    kind: Kind
    origin: Origin
    tags: list[str] = Field(max_length=3)


SCHEMA = Thing.model_json_schema()


async def call(agent: Agent, messages: list, constrained: bool, max_tokens: int) -> CallRecord:
    record = agent.new_record(1, agent.name)
    sampling = agent.sampling(0, max_tokens)
    sampling.constraint = Constraint(schema=SCHEMA) if constrained else None
    await agent.complete(messages, record, CallOptions(deadline=1e12, sampling=sampling))
    return record


def rate(record: CallRecord) -> float:
    decode_s = (record.latency_s or 0) - (record.ttft_s or 0)
    return (record.completion_tokens or 0) / decode_s if decode_s > 0 else float("nan")


async def bench_model(model: str, max_tokens: int) -> dict:
    agent = Agent.from_config(model, AgentConfig(provider="local", model=model, temperature=0.0))
    warm = [{"role": "user", "content": "Hi"}]
    await call(agent, warm, True, 4)  # model load and first grammar, not measured
    rows: dict[str, list] = {"grammar": [], "free": []}
    valid_before = valid_after = 0
    for subject in SUBJECTS:
        prompt = with_instruction(
            [{"role": "user", "content": ASK.format(subject)}], json_howto(SCHEMA)
        )
        for constrained in (True, False):
            record = await call(agent, prompt, constrained, max_tokens)
            rows["grammar" if constrained else "free"].append(record)
        text, _, error = check_answer(record.response, SCHEMA)  # the free answer
        valid_before += error is None
        if error is not None:
            fixed = await call(agent, repair_prompt(prompt, text, error), False, max_tokens)
            error = check_answer(fixed.response, SCHEMA)[2]
        valid_after += error is None
    grammar_ok = sum(check_answer(r.response, SCHEMA)[2] is None for r in rows["grammar"])
    return {"rows": rows, "before": valid_before, "after": valid_after, "grammar_ok": grammar_ok}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b", "smollm2-135m"])
    p.add_argument("--max-tokens", type=int, default=120)
    a = p.parse_args()
    n = len(SUBJECTS)
    print(f"{n} prompts per model, max_tokens {a.max_tokens}, temperature 0, MIXKIT_THREADS="
          f"{os.environ.get('MIXKIT_THREADS', 'all cores')}\n")  # fmt: skip
    print(
        "| model | decode | TTFT median s | decode tok/s median | completion tokens median | valid |"
    )
    print("|---|---|---:|---:|---:|---:|")
    repairs = []
    for model in a.models:
        out = asyncio.run(bench_model(model, a.max_tokens))
        for kind, records in out["rows"].items():
            ttft = statistics.median(r.ttft_s or 0 for r in records)
            tps = statistics.median(rate(r) for r in records)
            toks = statistics.median(r.completion_tokens or 0 for r in records)
            valid = out["grammar_ok"] if kind == "grammar" else out["before"]
            print(f"| {model} | {kind} | {ttft:.3f} | {tps:.1f} | {toks:.0f} | {valid}/{n} |")
        repairs.append(f"| {model} | {out['before']}/{n} | {out['after']}/{n} |")
    print("\nUnconstrained answers, schema-valid before and after the one repair:\n")
    print("| model | valid before repair | valid after repair |\n|---|---:|---:|")
    print("\n".join(repairs))


if __name__ == "__main__":
    main()
