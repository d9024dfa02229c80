"""The gate: which agents a prompt consults (MoE-style top-k gating over agents).

`model` is the gate itself (predictors, decision, training, gate files), `plan` what a run does
with it, `features` the prompt features, `scored` what it learns from; `packaged/` holds the gate
files that ship with mixkit (`default` is the `gated` preset's)."""

from mixkit.moa.gate.model import Gate, GateDecision, load, packaged_gates, train, vote
from mixkit.moa.gate.scored import ScoredCall

__all__ = ["Gate", "GateDecision", "ScoredCall", "load", "packaged_gates", "train", "vote"]
