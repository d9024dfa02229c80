"""A gate over agents: the Mixture-of-Experts idea applied to a Mixture-of-Agents.

Per prompt, the gate predicts how likely each candidate is to answer correctly and consults only
the best few, as an MoE gating network sends a token to its top-k experts:

    features(prompt) ──> p_a = sigmoid(w_a · x + b_a)      one logistic "expert score" per agent
                     ──> p_mix = sigmoid(w_m · x + b_m)    the chance that mixing the top-k is right
    utility_a   = p_a   - cost_weight * cost_a     (cost: declared prices, else tokens; plus latency)
    utility_mix = p_mix - cost_weight * sum(cost of the k consulted + the combiner)
    alone (the best agent answers by itself) if max utility_a >= utility_mix, else mix:
    the top-k slots by utility, weights = softmax(utility / temperature) over those k only
    (top-k with renormalised weights, as in Shazeer et al. 2017).

It learns from scored calls (`mixkit eval` results in the log database, or a JSONL file): each
record says which agent answered which prompt, how well (score 0..1), what final answer it gave,
and how long it took (each agent's mean latency is kept for the cost term: a program agent is
slower to its answer). A gate file is small JSON (`save` / `load`; version 2 added latency,
version 1 files still load, with no latency); `tasks` summarises what it learned per task.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from mixkit.config import json_object
from mixkit.errors import ConfigError
from mixkit.moa.gate.costs import relative_costs, relative_latencies
from mixkit.moa.gate.features import extractor
from mixkit.moa.gate.scored import ScoredCall, read_jsonl

__all__ = [
    "Gate",
    "GateDecision",
    "Predictor",
    "ScoredCall",
    "load",
    "read_jsonl",
    "relative_costs",
    "relative_latencies",
    "train",
]

GATE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no latency_s (read as 0: latency plays no part)
MIX = "mix"  # the candidate "consult the top-k and combine them"


@dataclass
class Predictor:
    """A logistic model of one candidate's chance of a correct answer."""

    weights: list[float]
    bias: float
    train_accuracy: float  # mean score in the training data
    prompt_tokens: float = 0.0  # mean per call in the training data (the cost term's default)
    completion_tokens: float = 0.0
    latency_s: float = 0.0  # mean seconds to the answer in the training data (0: unknown)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(x @ np.asarray(self.weights, dtype=np.float32) + self.bias)


@dataclass
class GateDecision:
    """What the gate decided for one prompt (recorded in the run's trace)."""

    strategy: str  # "alone" | "mix"
    chosen: list[str]  # slot labels consulted, best first
    weights: list[float]  # renormalised gate weights of `chosen`
    skipped: list[str]  # slot labels not consulted
    ranking: list[str]  # every slot label, best first (fallbacks are taken in this order)
    scores: dict[str, float]  # predicted accuracy per agent, and for "mix"
    utilities: dict[str, float]
    features_ms: float = 0.0
    explore: bool = False  # a random candidate was taken (exploration noise)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Gate:
    """A trained gate: one predictor per agent, one for mixing, and what it saw in training."""

    features: str
    agents: dict[str, Predictor]
    mix: Predictor
    mix_k: int
    tasks: dict[str, dict] = field(default_factory=dict)  # per training task: n, accuracies
    source: str = ""

    # -- prediction ---------------------------------------------------------------------------
    def scores(self, prompt: str) -> tuple[dict[str, float], float]:
        """Predicted accuracy per agent and for mixing, and the feature time in ms."""
        start = time.perf_counter()
        x = extractor(self.features)([prompt])  # (1, dim)
        ms = (time.perf_counter() - start) * 1000
        out = {name: float(p.predict(x)[0]) for name, p in self.agents.items()}
        out[MIX] = float(self.mix.predict(x)[0])
        return out, ms

    def decide(
        self,
        prompt: str,
        slots: list[tuple[str, str]],
        *,
        k: int,
        cost_weight: float = 0.0,
        costs: dict[str, float] | None = None,
        combiner_cost: float = 0.0,
        temperature: float = 0.05,
        noise: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> GateDecision:
        """Choose for `prompt` among `slots` = [(label, agent name)], e.g. [("qwen#1", "qwen")].

        `costs[agent]` is a relative cost in [0, 1] (see `relative_costs`). `noise` > 0 adds
        Gaussian noise of that scale to every utility (exploration while collecting traces, as
        noisy top-k gating does in training).
        """
        self.check_agents({a for _, a in slots})
        scores, ms = self.scores(prompt)
        costs = costs or {}
        util = {a: scores[a] - cost_weight * costs.get(a, 0.0) for _, a in slots}
        mix_cost = sum(costs.get(a, 0.0) for _, a in slots[:k]) + combiner_cost
        util[MIX] = scores[MIX] - cost_weight * mix_cost
        explore = False
        if noise > 0:
            rng = rng or np.random.default_rng()
            util = {c: u + float(rng.normal(0.0, noise)) for c, u in util.items()}
            explore = True
        # Stable order: by utility, then by slot position (repeats of one agent keep their order).
        ranked = sorted(range(len(slots)), key=lambda i: (-util[slots[i][1]], i))
        best = slots[ranked[0]]
        if k <= 1 or len(slots) == 1 or util[best[1]] >= util[MIX]:
            chosen_idx = ranked[:1]
            strategy = "alone"
        else:
            chosen_idx = ranked[:k]
            strategy = "mix"
        logits = np.array([util[slots[i][1]] for i in chosen_idx]) / temperature
        w = np.exp(logits - logits.max())
        w = w / w.sum()
        chosen = [slots[i][0] for i in chosen_idx]
        return GateDecision(
            strategy=strategy,
            chosen=chosen,
            weights=[round(float(v), 4) for v in w],
            skipped=[label for label, _ in slots if label not in chosen],
            ranking=[slots[i][0] for i in ranked],
            scores={c: round(s, 4) for c, s in scores.items()},
            utilities={c: round(u, 4) for c, u in util.items()},
            features_ms=round(ms, 3),
            explore=explore,
        )

    def check_agents(self, names: set[str]) -> None:
        missing = sorted(names - set(self.agents))
        if missing:
            raise ConfigError(
                f"the gate has no model for agent(s) {', '.join(missing)} (it knows: "
                f"{', '.join(sorted(self.agents))}); train one on your traces with `mixkit gate train`"
            )

    def expected_tokens(self, agent: str) -> tuple[float, float]:
        p = self.agents[agent]
        return p.prompt_tokens, p.completion_tokens

    def expected_latency(self, agent: str) -> float:
        return self.agents[agent].latency_s

    # -- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": GATE_VERSION,
            "features": self.features,
            "mix_k": self.mix_k,
            "source": self.source,
            "agents": {n: asdict(p) for n, p in self.agents.items()},
            "mix": asdict(self.mix),
            "tasks": self.tasks,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Gate:
        try:
            if d.get("version") not in READABLE_VERSIONS:
                raise ValueError(
                    f"version {d.get('version')!r}, expected one of {READABLE_VERSIONS}"
                )
            extractor(d["features"])  # unknown feature kinds fail here, with the choices
            agents = {n: Predictor(**p) for n, p in d["agents"].items()}
            gate = cls(
                features=d["features"],
                agents=agents,
                mix=Predictor(**d["mix"]),
                mix_k=int(d["mix_k"]),
                tasks=dict(d.get("tasks") or {}),
                source=str(d.get("source") or ""),
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(
                f"{where}: not a mixkit gate file ({type(e).__name__}: {e}); "
                "make one with `mixkit gate train`"
            ) from None
        dims = {len(p.weights) for p in [*agents.values(), gate.mix]}
        if len(dims) != 1:
            raise ConfigError(f"{where}: not a mixkit gate file (predictors of unequal sizes)")
        return gate


def load(path: str | Path) -> Gate:
    """Load a gate file, or the packaged gate called `default` (see `packaged_gates()`)."""
    name = str(path)
    packaged = resources.files("mixkit.moa.gate") / "packaged" / f"{name}.json"
    if "/" not in name and not name.endswith(".json") and packaged.is_file():
        text, where = packaged.read_text(), f"packaged gate '{name}'"
    else:
        try:
            text, where = Path(path).read_text(), str(path)
        except FileNotFoundError:
            raise ConfigError(
                f"{path}: gate file not found (packaged gates: {', '.join(packaged_gates())}; "
                "or train one with `mixkit gate train`)"
            ) from None
        except (IsADirectoryError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a readable gate file ({e})") from None
    data = json_object(text, where, "a mixkit gate file (a JSON object)")
    return Gate.from_dict(data, where)


def packaged_gates() -> list[str]:
    folder = resources.files("mixkit.moa.gate") / "packaged"
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


# -- training ---------------------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, steps: int = 400, lr: float = 0.5
) -> tuple[np.ndarray, float]:
    """Logistic regression with soft labels y in [0, 1] and an L2 penalty; full-batch Adam.

    x: (N, D) features, y: (N,) targets. Returns (weights (D,), bias).
    """
    n, d = x.shape
    w, b = np.zeros(d), float(np.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3)))
    m_w, v_w, m_b, v_b = np.zeros(d), np.zeros(d), 0.0, 0.0
    for t in range(1, steps + 1):
        p = _sigmoid(x @ w + b)  # (N,)
        g_w = x.T @ (p - y) / n + l2 * w  # cross-entropy gradient (D,)
        g_b = float((p - y).mean())
        m_w = 0.9 * m_w + 0.1 * g_w
        v_w = 0.999 * v_w + 0.001 * g_w**2
        m_b = 0.9 * m_b + 0.1 * g_b
        v_b = 0.999 * v_b + 0.001 * g_b**2
        corr1, corr2 = 1 - 0.9**t, 1 - 0.999**t
        w -= lr * (m_w / corr1) / (np.sqrt(v_w / corr2) + 1e-8) * 0.1
        b -= lr * (m_b / corr1) / (math.sqrt(v_b / corr2) + 1e-8) * 0.1
    return w, b


def vote(answers: list[str | None], weights: list[float] | None = None) -> str | None:
    """The weighted-majority answer (ties: the earliest answer); None if none was given."""
    weights = weights or [1.0] * len(answers)
    tally: dict[str, float] = defaultdict(float)
    for a, w in zip(answers, weights, strict=True):
        if a is not None:
            tally[a] += w
    if not tally:
        return None
    best = max(tally.values())
    return next(a for a in answers if a is not None and tally[a] == best)


def _by_prompt(records: list[ScoredCall]) -> dict[str, dict]:
    """prompt -> {"task", "agents": {agent: [ScoredCall, ...]}} in record order."""
    grouped: dict[str, dict] = {}
    for r in records:
        g = grouped.setdefault(r.prompt, {"task": r.task, "agents": defaultdict(list)})
        g["agents"][r.agent].append(r)
    return grouped


def mix_label(samples: list[ScoredCall]) -> float:
    """The score a majority vote over `samples` would get: the score of the winning answer."""
    winner = vote([s.answer for s in samples])
    if winner is None:
        return 0.0
    return max(s.score for s in samples if s.answer == winner)


def train(
    records: list[ScoredCall],
    *,
    features: str = "text",
    mix_k: int = 3,
    l2: float = 1e-2,
    source: str = "",
) -> Gate:
    """Fit a gate: per agent, P(correct | prompt); for mixing, P(a vote of mix_k is correct).

    The mixing label of a prompt is a majority vote over the first `mix_k` samples of the agents
    ranked by their overall training accuracy (the slots the gate would fill), so it is learned
    from the same calls, with no extra model calls.
    """
    if not records:
        raise ConfigError("no scored calls to train the gate on (run `mixkit eval` first)")
    grouped = _by_prompt(records)
    agents = sorted({r.agent for r in records})
    overall = {a: float(np.mean([r.score for r in records if r.agent == a])) for a in agents}
    ranking = sorted(agents, key=lambda a: -overall[a])
    prompts = list(grouped)
    x = extractor(features)(prompts)  # (N, D)
    predictors: dict[str, Predictor] = {}
    for a in agents:
        rows = [i for i, p in enumerate(prompts) if grouped[p]["agents"].get(a)]
        y = np.array([np.mean([s.score for s in grouped[prompts[i]]["agents"][a]]) for i in rows])
        w, b = fit_logistic(x[rows], y, l2=l2)
        calls = [r for r in records if r.agent == a]
        predictors[a] = Predictor(
            weights=[round(float(v), 5) for v in w],
            bias=round(b, 5),
            train_accuracy=round(overall[a], 4),
            prompt_tokens=_mean_known([c.prompt_tokens for c in calls]),
            completion_tokens=_mean_known([c.completion_tokens for c in calls]),
            latency_s=round(_mean_known([c.latency_s for c in calls]), 3),
        )
    mix_y = []
    for p in prompts:
        pool = [s for a in ranking for s in grouped[p]["agents"].get(a, [])][:mix_k]
        mix_y.append(mix_label(pool))
    w, b = fit_logistic(x, np.array(mix_y), l2=l2)
    mix = Predictor([round(float(v), 5) for v in w], round(b, 5), round(float(np.mean(mix_y)), 4))
    gate = Gate(features, predictors, mix, mix_k, source=source)
    gate.tasks = _task_summary(gate, grouped, prompts, x, dict(zip(prompts, mix_y, strict=True)))
    return gate


def _mean_known(values: list[float | None] | list[int | None]) -> float:
    """The mean of the values recorded (records without tokens or timings, e.g. labelled
    prompts, do not pull it to 0); 0 when none is."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else 0.0


def _task_summary(
    gate: Gate, grouped: dict, prompts: list[str], x: np.ndarray, mix_y: dict[str, float]
) -> dict:
    """Per training task: items, each candidate's real accuracy, and what the gate would pick."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_task[grouped[p]["task"] or "(no task)"].append(i)
    out = {}
    for task, idx in sorted(by_task.items()):
        real = {}
        for a in gate.agents:
            got = [
                np.mean([s.score for s in grouped[prompts[i]]["agents"][a]])
                for i in idx
                if grouped[prompts[i]]["agents"].get(a)
            ]
            real[a] = round(float(np.mean(got)), 4) if got else None
        real[MIX] = round(float(np.mean([mix_y[prompts[i]] for i in idx])), 4)
        picks: Counter = Counter()
        for i in idx:
            preds = {a: float(p.predict(x[i : i + 1])[0]) for a, p in gate.agents.items()}
            best = max(preds, key=lambda a: preds[a])
            mix_p = float(gate.mix.predict(x[i : i + 1])[0])
            picks["mix" if mix_p > preds[best] else f"alone:{best}"] += 1
        out[task] = {"n": len(idx), "accuracy": real, "picks": dict(picks)}
    return out
