"""Compare answering strategies on the same items: `mixkit eval --strategies ...`.

    single        every agent of the first layer alone, `samples` times per item (sample 0 is the
                  reported run; sample 1, where taken, is the same agent scored again: the noise)
    single=AGENT  only this agent alone (repeatable); single=AGENT*N: N samples of it per item
    vote          a majority vote over the best single agent's samples (no new calls)
    vote-agents   a majority vote over every single agent's first answer (no new calls)
    vote-weighted the same answers weighted as the gate weighs a mix (no new calls)
    moa           the plain MoA: every layer, then the aggregator (no gate, no early exit)
    moa=PRESET    the plain MoA of another preset or config file (e.g. moa=self-moa)
    gated         the gate, no mitigations; computed from the single runs when every agent of
                  the first layer runs alone too, wherever the gate's choice needs no other call
                  (evals/replay.py: statistically identical, no extra calls)
    gated+exit    the gate, and early exit on agreement
    gated+budgets the gate, early exit, proposer max_tokens x0.75 and quorum k-1

Runs are interleaved: for each item, every strategy runs in turn, so a change in the machine's
load touches all strategies alike. Every run is a real, timed engine run; every scored item can
be stored in the `eval_items` table, where `mixkit gate train` finds the single-agent ones.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixkit.errors import ConfigError
from mixkit.evals.collect import AnyTask, ItemResult, run_item, single_config
from mixkit.evals.replay import replay_gated, vote_agents, vote_weighted
from mixkit.moa.agents.providers.local import POOL
from mixkit.moa.config import EarlyExitConfig, MoAConfig, resolve
from mixkit.moa.engine.pipeline import MoA
from mixkit.moa.gate.model import Gate, load, vote

STRATEGIES = (
    "single",
    "vote",
    "vote-agents",
    "vote-weighted",
    "moa",
    "gated",
    "gated+exit",
    "gated+budgets",
)


@dataclass
class Row:
    """One strategy on one task (or "all")."""

    task: str
    strategy: str
    n: int
    accuracy: float
    se: float  # standard error of the accuracy (sample standard deviation / sqrt(n))
    ttft_p50: float | None
    ttft_p90: float | None
    e2e_p50: float | None
    calls: float  # per item
    tokens: float  # per item, prompt + completion
    cost_usd: float | None  # per item, None when no agent declares prices
    failed: int
    alone: float | None = None  # gated: fraction of items answered by one agent alone
    early_exits: float | None = None  # fraction of items that exited early

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def parse_strategies(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    for s in names:
        if s not in STRATEGIES and not s.startswith(("moa=", "single=")):
            raise ConfigError(
                f"--strategies: unknown strategy '{s}' (choose from {', '.join(STRATEGIES)}, moa=PRESET, single=AGENT)"
            )
    if not names:
        raise ConfigError("--strategies: name at least one strategy")
    return names


def _singles(config: MoAConfig, strategies: list[str], samples: int) -> dict[str, int]:
    """agent -> samples per item, from `single` (every first-layer agent) and `single=A[*N]`."""
    agents: dict[str, int] = {}
    for s in strategies:
        if s.startswith("single="):
            name, _, count = s[7:].partition("*")
            if count and not count.isdigit():
                raise ConfigError(f"--strategies: '{s}': write single=AGENT or single=AGENT*N")
            agents[name] = int(count) if count else samples
    if not agents and ({"single", "vote", "vote-agents", "vote-weighted"} & set(strategies)):
        names = config.layers[0].agents if config.layers else [config.aggregator]
        agents = {a: samples for a in names}
    for a in agents:
        if a not in config.agents:
            known = ", ".join(config.agents)
            raise ConfigError(f"single={a}: no such agent in '{config.name}' (it has: {known})")
    return agents


def systems(
    config: MoAConfig, strategies: list[str], samples: int = 1
) -> list[tuple[str, MoAConfig, str | None, int]]:
    """(label, config, agent-if-single, samples) for every system the strategies need to run."""
    out: list[tuple[str, MoAConfig, str | None, int]] = []
    for a, n in _singles(config, strategies, samples).items():
        out.append((f"single:{a}", single_config(config, a), a, n))
    plain = config.model_copy(update={"gate": None, "early_exit": None})
    for s in strategies:
        if s == "moa":
            out.append(("moa", plain, None, 1))
        elif s.startswith("moa="):
            other = resolve(None, s[4:]) if s[4:].endswith(".toml") else resolve(s[4:])
            out.append((s, other, None, 1))
        elif s.startswith("gated"):
            if config.gate is None:
                raise ConfigError(f"strategy '{s}' needs a mixture with a [gate] (try -p gated)")
            out.append((s, _gated_variant(config, s), None, 1))
    return out


def _gated_variant(config: MoAConfig, strategy: str) -> MoAConfig:
    if strategy == "gated":
        return config.model_copy(update={"early_exit": None})
    exit_rule = config.early_exit or EarlyExitConfig()
    if strategy == "gated+exit":
        return config.model_copy(update={"early_exit": exit_rule})
    agents = {
        name: a.model_copy(update={"max_tokens": max(16, int(a.max_tokens * 0.75))})
        for name, a in config.agents.items()
    }
    k = config.gate.k if config.gate else 1
    first = config.layers[0].model_copy(update={"quorum": max(1, k - 1), "min_answers": 1})
    return config.model_copy(
        update={"early_exit": exit_rule, "agents": agents, "layers": [first, *config.layers[1:]]}
    )


async def run_strategies(
    config: MoAConfig,
    tasks: list[AnyTask],
    strategies: list[str],
    *,
    samples: int = 1,
    max_tokens: int | None = 128,
    log: bool | str = False,
    on_result: Callable[[ItemResult], None] | None = None,
) -> list[ItemResult]:
    """Every system of every strategy on every item, interleaved per item; `gated` and
    `vote-agents` from the single runs where they can be (module docstring)."""
    plan = systems(config, strategies, samples)
    engines = {label: MoA(cfg, log=log) for label, cfg, _, _ in plan}
    gate = _replay_gate(config, plan)
    order = [agent for _, _, agent, _ in plan if agent is not None]
    results: list[ItemResult] = []

    def emit(r: ItemResult) -> None:
        results.append(r)
        if on_result:
            on_result(r)

    reuse, POOL.reuse_prefix = POOL.reuse_prefix, False  # no strategy runs on a warm prompt cache
    try:
        for task in tasks:
            for item in task.items():
                singles: dict[str, ItemResult] = {}
                for label, _, agent, count in plan:
                    if label == "gated" and gate is not None:
                        replayed = replay_gated(config, gate, singles)
                        if replayed is not None:
                            emit(replayed)
                            continue
                    for sample in range(count):
                        r = await run_item(
                            engines[label], task, item, label, agent, sample, max_tokens
                        )
                        emit(r)
                        if agent is not None and sample == 0:
                            singles[agent] = r
                for voted in _votes(config, strategies, singles, order):
                    emit(voted)
    finally:
        POOL.reuse_prefix = reuse
    return results


def _votes(
    config: MoAConfig, strategies: list[str], singles: dict[str, ItemResult], order: list[str]
) -> list[ItemResult]:
    """The votes asked for, over this item's single runs."""
    out = [vote_agents(singles, order)] if "vote-agents" in strategies else []
    if "vote-weighted" in strategies and config.gate is not None:
        out.append(vote_weighted(config, load(config.gate.path), singles))
    return [r for r in out if r is not None]


def _replay_gate(config: MoAConfig, plan: list) -> Gate | None:
    """The gate to replay `gated` with: when every first-layer agent also runs alone (their
    single runs come first in `plan`), else None (`gated` then runs for real)."""
    if config.gate is None or not any(label == "gated" for label, *_ in plan):
        return None
    alone = {agent for _, _, agent, _ in plan if agent is not None}
    if not set(config.layers[0].agents) <= alone:
        return None
    return load(config.gate.path)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _se(scores: list[float]) -> float:
    """Standard error of the mean score (0 below two items)."""
    return statistics.stdev(scores) / len(scores) ** 0.5 if len(scores) > 1 else 0.0


def _row(task: str, strategy: str, rs: list[ItemResult]) -> Row:
    ttft = [r.ttft_s for r in rs if r.ttft_s is not None]
    costs = [r.cost_usd for r in rs if r.cost_usd is not None]
    gated = [r for r in rs if r.gate]
    return Row(
        task=task,
        strategy=strategy,
        n=len(rs),
        accuracy=statistics.fmean(r.score for r in rs) if rs else 0.0,
        se=_se([r.score for r in rs]),
        ttft_p50=_pct(ttft, 0.5),
        ttft_p90=_pct(ttft, 0.9),
        e2e_p50=_pct([r.wall_s for r in rs], 0.5),
        calls=statistics.fmean(r.calls for r in rs) if rs else 0.0,
        tokens=statistics.fmean(r.prompt_tokens + r.completion_tokens for r in rs) if rs else 0.0,
        cost_usd=sum(costs) / len(rs) if costs else None,
        failed=sum(r.failed for r in rs),
        alone=(sum((r.gate or {}).get("strategy") == "alone" for r in gated) / len(gated))
        if gated
        else None,
        early_exits=(sum(r.early_exit for r in rs) / len(rs))
        if strategy.startswith("gated")
        else None,
    )


def summarize(results: list[ItemResult]) -> list[Row]:
    """One row per (task, strategy), then the same over all tasks ("all")."""
    rows: list[Row] = []
    tasks = list(dict.fromkeys(r.task for r in results))
    for task in [*tasks, "all"]:
        rs = [r for r in results if task in ("all", r.task)]
        singles = sorted({r.agent for r in rs if r.agent})
        for agent in singles:
            first = [r for r in rs if r.agent == agent and r.sample == 0]
            rows.append(_row(task, f"single:{agent}", first))
            again = [r for r in rs if r.agent == agent and r.sample == 1]
            if again:
                rows.append(_row(task, f"single:{agent} (again)", again))
        best = _best_single(results, singles)
        if best is not None and any(r.agent == best and r.sample == 2 for r in rs):
            rows.append(_vote_row(task, best, [r for r in rs if r.agent == best]))  # >= 3 samples
        for label in dict.fromkeys(r.system for r in rs if r.agent is None):
            rows.append(_row(task, label, [r for r in rs if r.system == label]))
    return rows


def _best_single(results: list[ItemResult], agents: list[str]) -> str | None:
    """The single agent with the best mean accuracy over all tasks (its first samples)."""
    if not agents:
        return None
    acc = {
        a: statistics.fmean(r.score for r in results if r.agent == a and r.sample == 0)
        for a in agents
    }
    return max(agents, key=lambda a: acc[a])


def _vote_row(task: str, agent: str, rs: list[ItemResult]) -> Row:
    """Majority vote over `agent`'s samples of each item (no new calls, so no latency)."""
    by_item: dict[tuple[str, int], list[ItemResult]] = {}
    for r in rs:
        by_item.setdefault((r.task, r.item.index), []).append(r)
    scores, calls, tokens = [], [], []
    for group in by_item.values():
        winner = vote([r.answer for r in group])
        scores.append(max((r.score for r in group if r.answer == winner), default=0.0))
        calls.append(len(group))
        tokens.append(sum(r.prompt_tokens + r.completion_tokens for r in group))
    n = len(by_item)
    samples = max((len(g) for g in by_item.values()), default=0)
    return Row(
        task=task,
        strategy=f"vote:{agent} x{samples}",
        n=n,
        accuracy=statistics.fmean(scores) if scores else 0.0,
        se=_se(scores),
        ttft_p50=None,
        ttft_p90=None,
        e2e_p50=None,
        calls=statistics.fmean(calls) if calls else 0.0,
        tokens=statistics.fmean(tokens) if tokens else 0.0,
        cost_usd=None,
        failed=0,
    )


def pareto_plot(rows: list[Row], path: str | Path, title: str = "") -> Path:
    """Accuracy against TTFT p50, one point per strategy over all tasks; the Pareto front drawn."""
    try:
        # lazy: matplotlib is optional (the train extra), and only the plot needs it
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # lazy: as above, after choosing the Agg backend
    except ImportError:
        raise ConfigError("the Pareto plot needs matplotlib (pip install matplotlib)") from None
    # (strategy, TTFT p50, accuracy %, calls) of the rows that have a TTFT
    pts = [(r.strategy, r.ttft_p50, r.accuracy * 100, r.calls) for r in rows
           if r.task == "all" and r.ttft_p50 is not None]  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, ttft, acc, calls in pts:
        ax.scatter(ttft, acc, s=40 + 12 * calls, alpha=0.8)
        ax.annotate(name, (ttft, acc), fontsize=8, xytext=(5, 4), textcoords="offset points")
    front: list[tuple[float, float]] = []
    for _, ttft, acc, _ in sorted(pts, key=lambda p: (p[1], -p[2])):
        if not front or acc > front[-1][1]:
            front.append((ttft, acc))
    if len(front) > 1:
        ax.plot([t for t, _ in front], [a for _, a in front], "k--", lw=0.8, label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("time to first token, p50 (s)")
    ax.set_ylabel("accuracy over all tasks (%)")
    ax.set_title(title or "accuracy against time to first token (marker size: calls per item)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
