"""The gate's cost term: what a call of each agent costs, relative to the dearest.

    relative_costs(tokens, prices)   money: declared prices, else token counts   -> (0, 1]
    relative_latencies(seconds)      time to the answer, learned from training  -> [0, 1]

plan.agent_costs adds the two (latency scaled by the config's `gate.latency_weight`), and the
gate subtracts `cost_weight` times the sum from each candidate's predicted accuracy.
"""

from __future__ import annotations

import numpy as np


def relative_costs(
    agents: dict[str, tuple[float, float]], prices: dict[str, tuple[float, float] | None]
) -> dict[str, float]:
    """Each agent's expected cost per call, divided by the largest: values in (0, 1].

    `agents[name] = (prompt_tokens, completion_tokens)` expected per call; `prices[name]` =
    (USD per million input tokens, per million output tokens), or None for unpriced agents,
    which are costed by their token count. If some agents are priced and others not, the
    unpriced ones are costed at the mean declared price, so the two kinds stay comparable.
    """
    declared = [p for p in prices.values() if p is not None]
    mean_in = float(np.mean([p[0] for p in declared])) if declared else 1.0
    mean_out = float(np.mean([p[1] for p in declared])) if declared else 1.0
    raw = {}
    for name, (tin, tout) in agents.items():
        price_in, price_out = prices.get(name) or (mean_in, mean_out)
        raw[name] = tin * price_in + tout * price_out
    top = max(raw.values(), default=0.0)
    return {n: (v / top if top > 0 else 0.0) for n, v in raw.items()}


def relative_latencies(seconds: dict[str, float]) -> dict[str, float]:
    """Each agent's expected seconds to its answer, divided by the largest: values in [0, 1].

    Agents with no known latency (0, e.g. from a version-1 gate file) cost nothing here; when
    none is known, every value is 0 and latency plays no part.
    """
    top = max(seconds.values(), default=0.0)
    return {n: (max(0.0, v) / top if top > 0 else 0.0) for n, v in seconds.items()}
