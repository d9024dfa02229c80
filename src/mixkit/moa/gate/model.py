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

Votes of one agent's samples are candidates too, where the gate learned them (`votes`): an agent
asked up to n times, stopping when `agree` of its answers agree, answering with their majority
(self-consistency). Its utility is p_vote_a - cost_weight * cost_a * (samples it drew on average
in training), so the gate spends extra samples only on prompts where it predicts they pay:

    utility_vote_a = p_vote_a - cost_weight * cost_a * samples_a      -> strategy "votes"

It learns from scored calls (`mixkit eval` results in the log database, or a JSONL file): each
record says which agent answered which prompt, how well (score 0..1), what final answer it gave,
and how long it took (each agent's mean latency is kept for the cost term: a program agent is
slower to its answer). Several records of one agent on one prompt are samples: they train that
agent's vote candidate (`mixkit eval --samples`), labelled with the answer a vote over them
would give, with no extra calls. A gate file is small JSON (`save` / `load`; version 2 added latency,
version 1 files still load, with no latency); `tasks` summarises what it learned per task.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
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
    "VotePredictor",
    "fit_logistic",
    "load",
    "mix_label",
    "read_jsonl",
    "relative_costs",
    "relative_latencies",
    "train",
    "vote",
    "vote_label",
    "vote_rule",
    "expected_vote_label",
]

GATE_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1: no latency_s (read as 0: latency plays no part); 2: no votes
MIX = "mix"  # the candidate "consult the top-k and combine them"
VOTES = "votes:"  # + agent: the candidate "that agent, asked until its answers agree"


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
class VotePredictor(Predictor):
    """A logistic model of the chance that a vote over one agent's samples is correct."""

    votes: int = 3  # the most samples the vote draws
    agree: int = 2  # it stops as soon as this many answers agree (1: as soon as one answers)
    samples: float = 0.0  # samples it drew per prompt in training, on average (its cost)


def vote_rule(votes: int | None, agree: int | None) -> str:
    """A vote candidate's stopping rule in words (gate show, mixkit logs)."""
    if (agree or 1) <= 1:
        return f"asked until it answers, up to {votes} answers"
    return f"up to {votes} answers until {agree} agree"


@dataclass
class GateDecision:
    """What the gate decided for one prompt (recorded in the run's trace)."""

    strategy: str  # "alone" | "votes" (the chosen agent asked until it agrees) | "mix"
    chosen: list[str]  # slot labels consulted, best first
    weights: list[float]  # renormalised gate weights of `chosen`
    skipped: list[str]  # slot labels not consulted
    ranking: list[str]  # every slot label, best first (fallbacks are taken in this order)
    scores: dict[str, float]  # predicted accuracy per agent, and for "mix"
    utilities: dict[str, float]
    features_ms: float = 0.0
    explore: bool = False  # a random candidate was taken (exploration noise)
    votes: int = 1  # "votes": the most answers the chosen agent gives
    agree: int = 1  # "votes": it stops when this many agree

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
    votes: dict[str, VotePredictor] = field(default_factory=dict)  # agent -> its vote candidate

    # -- prediction ---------------------------------------------------------------------------
    def scores(self, prompt: str) -> tuple[dict[str, float], float]:
        """Predicted accuracy per agent and for mixing, and the feature time in ms."""
        start = time.perf_counter()
        x = extractor(self.features)([prompt])  # (1, dim)
        ms = (time.perf_counter() - start) * 1000
        out = {name: float(p.predict(x)[0]) for name, p in self.agents.items()}
        out[MIX] = float(self.mix.predict(x)[0])
        for name, p in self.votes.items():
            out[VOTES + name] = float(p.predict(x)[0])
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
        votes: bool = False,
    ) -> GateDecision:
        """Choose for `prompt` among `slots` = [(label, agent name)], e.g. [("qwen#1", "qwen")].

        `costs[agent]`: a relative cost in [0, 1] (`relative_costs`). `noise` > 0 adds Gaussian
        noise of that scale to every utility (exploration while collecting traces, as noisy
        top-k gating does in training). `votes`: the vote candidates (`self.votes`) compete too.
        """
        self.check_agents({a for _, a in slots})
        scores, ms = self.scores(prompt)
        util = self._utilities(scores, slots, k, cost_weight, costs or {}, combiner_cost, votes)
        explore = noise > 0
        if explore:
            rng = rng or np.random.default_rng()
            util = {c: u + float(rng.normal(0.0, noise)) for c, u in util.items()}
        # Stable order: by utility, then by slot position (repeats of one agent keep their order).
        ranked = sorted(range(len(slots)), key=lambda i: (-util[slots[i][1]], i))
        best = slots[ranked[0]]
        can_mix = k > 1 and len(slots) > 1
        voter = self._best_vote(util, max(util[best[1]], util[MIX] if can_mix else -math.inf))
        n_votes, agree = 1, 1
        if voter is not None:  # it answers first; the ranking after it is the fallback order
            first = next(i for i in ranked if slots[i][1] == voter)
            ranked = [first, *(i for i in ranked if i != first)]
            chosen_idx, strategy = [first], "votes"
            n_votes, agree = self.votes[voter].votes, self.votes[voter].agree
        elif not can_mix or util[best[1]] >= util[MIX]:
            chosen_idx = ranked[:1]
            strategy = "alone"
        else:
            chosen_idx = ranked[:k]
            strategy = "mix"
        w = _softmax(np.array([util[slots[i][1]] for i in chosen_idx]) / temperature)
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
            votes=n_votes,
            agree=agree,
        )

    def _utilities(
        self,
        scores: dict[str, float],
        slots: list[tuple[str, str]],
        k: int,
        cost_weight: float,
        costs: dict[str, float],
        combiner_cost: float,
        votes: bool,
    ) -> dict[str, float]:
        """Predicted accuracy minus cost_weight x relative cost, per candidate."""
        util = {a: scores[a] - cost_weight * costs.get(a, 0.0) for _, a in slots}
        mix_cost = sum(costs.get(a, 0.0) for _, a in slots[:k]) + combiner_cost
        util[MIX] = scores[MIX] - cost_weight * mix_cost
        if votes:  # a vote costs its agent's cost for every sample it draws on average
            for a in dict.fromkeys(a for _, a in slots if a in self.votes):
                drawn = self.votes[a].samples
                util[VOTES + a] = scores[VOTES + a] - cost_weight * costs.get(a, 0.0) * drawn
        return util

    @staticmethod
    def _best_vote(util: dict[str, float], to_beat: float) -> str | None:
        """The agent whose vote candidate has the best utility, if that beats `to_beat`."""
        voted = max((c for c in util if c.startswith(VOTES)), key=lambda c: util[c], default=None)
        if voted is None or util[voted] <= to_beat:
            return None
        return voted[len(VOTES) :]

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
            "votes": {n: asdict(p) for n, p in self.votes.items()},
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
                votes={n: VotePredictor(**p) for n, p in (d.get("votes") or {}).items()},
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(
                f"{where}: not a mixkit gate file ({type(e).__name__}: {e}); "
                "make one with `mixkit gate train`"
            ) from None
        dims = {len(p.weights) for p in [*agents.values(), gate.mix, *gate.votes.values()]}
        if len(dims) != 1:
            raise ConfigError(f"{where}: not a mixkit gate file (predictors of unequal sizes)")
        return gate


def _softmax(logits: np.ndarray) -> np.ndarray:
    w = np.exp(logits - logits.max())
    return w / w.sum()


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


# -- shared with training (training.py) ---------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


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


# The training half lives in training.py; it is re-exported here (`model.train`, ...).
from mixkit.moa.gate.training import (  # noqa: E402  (it imports this module's classes)
    expected_vote_label,
    fit_logistic,
    mix_label,
    train,
    vote_label,
)
