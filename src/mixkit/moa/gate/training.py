"""Training a gate (model.py) from scored calls: one logistic predictor per agent, one for
mixing, and one per agent with several samples of a prompt for a vote of its samples.

    train(records)                     -> Gate
    mix_label(samples)                 the score a majority vote over samples would get
    vote_label(samples, votes, agree)  the score of a vote that draws until `agree` agree,
                                       and how many samples it drew
    expected_vote_label(...)           the same averaged over the samples' orders (what a
                                       vote candidate learns)
    fit_logistic(x, y)                 logistic regression with soft labels (full-batch Adam)
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict

import numpy as np

from mixkit.errors import ConfigError
from mixkit.moa.gate.features import extractor
from mixkit.moa.gate.model import MIX, VOTES, Gate, Predictor, VotePredictor, _sigmoid, vote
from mixkit.moa.gate.scored import ScoredCall


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


def _by_prompt(records: list[ScoredCall]) -> dict[str, dict]:
    """prompt -> {"task", "agents": {agent: [ScoredCall, ...]}} in record order."""
    grouped: dict[str, dict] = {}
    for r in records:
        g = grouped.setdefault(r.prompt, {"task": r.task, "agents": defaultdict(list)})
        g["agents"][r.agent].append(r)
    return grouped


def vote_label(samples: list[ScoredCall], votes: int, agree: int) -> tuple[float, int]:
    """What a vote over one agent's `samples` (in order) would score, and how many it draws:
    answers are drawn until `agree` of them agree or `votes` are drawn; the majority of those
    wins (ties: the earliest). A sample with no answer (a failed call) is no vote."""
    drawn: list[ScoredCall] = []
    for s in samples[:votes]:
        drawn.append(s)
        if s.answer is not None and sum(d.answer == s.answer for d in drawn) >= agree:
            break
    return mix_label(drawn), len(drawn)


def expected_vote_label(
    samples: list[ScoredCall], votes: int, agree: int, orders: int = 120
) -> tuple[float, float]:
    """`vote_label` averaged over the orders the samples could have come in: a vote's expected
    score and draws, as the agent's own label is the mean over its samples, not the score of
    whichever came first. Every permutation where there are at most `orders` of them (up to 5
    samples), else `orders` random ones from a fixed seed."""
    if math.factorial(len(samples)) <= orders:
        shuffled = list(itertools.permutations(samples))
    else:
        rng = random.Random(0)
        shuffled = [tuple(rng.sample(samples, len(samples))) for _ in range(orders)]
    scores, drawn = [], []
    for order in shuffled:
        score, n = vote_label(list(order), votes, agree)
        scores.append(score)
        drawn.append(n)
    return float(np.mean(scores)), float(np.mean(drawn))


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
    votes: int = 3,
    agree: int = 2,
) -> Gate:
    """Fit a gate: per agent, P(correct | prompt); for mixing, P(a vote of mix_k is correct);
    per agent with several samples of a prompt, P(a vote of its samples is correct).

    The mixing label of a prompt is a majority vote over the first answer of each of the first
    `mix_k` agents ranked by their overall training accuracy (the slots the gate would fill), so
    it is learned from the same calls, with no extra model calls. An agent with at least `agree`
    samples of some prompt gets a vote candidate (`_fit_votes`, `vote_label`; `votes` <= 1:
    none).
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
        pool = [grouped[p]["agents"][a][0] for a in ranking if grouped[p]["agents"].get(a)]
        mix_y.append(mix_label(pool[:mix_k]))
    w, b = fit_logistic(x, np.array(mix_y), l2=l2)
    mix = Predictor([round(float(v), 5) for v in w], round(b, 5), round(float(np.mean(mix_y)), 4))
    gate = Gate(features, predictors, mix, mix_k, source=source)
    vote_y = _fit_votes(gate, grouped, prompts, x, votes, agree, l2) if votes > 1 else {}
    gate.tasks = _task_summary(
        gate, grouped, prompts, x, dict(zip(prompts, mix_y, strict=True)), vote_y
    )
    return gate


def _fit_votes(
    gate: Gate, grouped: dict, prompts: list[str], x: np.ndarray, votes: int, agree: int, l2: float
) -> dict[str, dict[str, float]]:
    """Add a vote candidate to `gate` for every agent with at least `agree` samples (and at
    least 2) of some prompt; return its labels (agent -> prompt -> score of the vote). With
    `agree` = 1 the candidate is "ask until it answers": what it can gain is the answers of
    later samples where earlier ones failed (a program that never printed an answer).

    It learns on every prompt the agent answered, as the agent's own predictor does: where it
    answered once, the vote's label is that answer's score (no evidence that a vote does better),
    so prompts that were labelled, not sampled (free text), keep it from looking good there.
    Its cost counts the samples drawn where there were enough to simulate the vote."""
    vote_y: dict[str, dict[str, float]] = {}
    for a in gate.agents:
        rows = [i for i, p in enumerate(prompts) if grouped[p]["agents"].get(a)]
        sampled = {i for i in rows if len(grouped[prompts[i]]["agents"][a]) >= max(agree, 2)}
        if not sampled:
            continue
        labelled = [
            expected_vote_label(grouped[prompts[i]]["agents"][a], votes, agree) for i in rows
        ]
        y = np.array([score for score, _ in labelled])
        w, b = fit_logistic(x[rows], y, l2=l2)
        drawn = [n for i, (_, n) in zip(rows, labelled, strict=True) if i in sampled]
        gate.votes[a] = VotePredictor(
            [round(float(v), 5) for v in w], round(b, 5), round(float(y.mean()), 4),
            votes=votes, agree=agree, samples=round(float(np.mean(drawn)), 3),
        )  # fmt: skip
        vote_y[a] = {prompts[i]: score for i, (score, _) in zip(rows, labelled, strict=True)}
    return vote_y


def _mean_known(values: list[float | None] | list[int | None]) -> float:
    """The mean of the values recorded (records without tokens or timings, e.g. labelled
    prompts, do not pull it to 0); 0 when none is."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else 0.0


def _task_summary(
    gate: Gate,
    grouped: dict,
    prompts: list[str],
    x: np.ndarray,
    mix_y: dict[str, float],
    vote_y: dict[str, dict[str, float]] | None = None,
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
        for a, labels in (vote_y or {}).items():
            got = [labels[prompts[i]] for i in idx if prompts[i] in labels]
            real[VOTES + a] = round(float(np.mean(got)), 4) if got else None
        picks: Counter = Counter()
        for i in idx:  # by predicted accuracy alone (the cost term is the preset's)
            preds = {a: float(p.predict(x[i : i + 1])[0]) for a, p in gate.agents.items()}
            best = max(preds, key=lambda a: preds[a])
            mix_p = float(gate.mix.predict(x[i : i + 1])[0])
            picks["mix" if mix_p > preds[best] else f"alone:{best}"] += 1
        out[task] = {"n": len(idx), "accuracy": real, "picks": dict(picks)}
    return out
