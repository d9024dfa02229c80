"""Offline evals: score a Mixture-of-Agents and each of its single agents on checkable tasks."""

from mixkit.evals.runner import EvalResult, SystemScore, run_eval, systems_of
from mixkit.evals.tasks import Item, Task, extract_answer

__all__ = ["EvalResult", "Item", "SystemScore", "Task", "extract_answer", "run_eval", "systems_of"]
