"""mixkit's one exception tree. Catch `MixkitError` to catch everything mixkit raises on purpose.

MixkitError
├── ConfigError        bad preset / config file / argument (names the field and the fix)
├── DataError          missing or unreadable data, corrupt checkpoint
└── ProviderError      an LLM backend failed
    ├── RateLimited    429 (carries retry_after when the server sent one)
    ├── Timeout        a call passed its deadline
    └── LayerFailed    a Mixture-of-Agents layer got too few answers (carries its failed calls)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the type only: errors.py is imported by every package, moa by few
    from mixkit.moa.agents.agent import CallRecord


class MixkitError(Exception):
    """Base class of every error mixkit raises deliberately."""


class ConfigError(MixkitError, ValueError):
    """A configuration, preset or argument is invalid. The message names the field and the fix."""


class DataError(MixkitError):
    """Input data or a checkpoint is missing, unreadable or corrupt."""


class ProviderError(MixkitError):
    """An LLM provider call failed."""


class RateLimited(ProviderError):
    """The provider answered 429."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Timeout(ProviderError):
    """A provider call passed its deadline."""


class LayerFailed(ProviderError):
    """A Mixture-of-Agents layer (the final aggregator's included) ended with too few answers.

    `layer` is 1-based (the aggregator's is the number of proposer layers + 1), `calls` are the
    layer's calls whose outcome is not ok (each with its error), and `deadline_expired` is True
    when time ran out: every one of them passed its deadline or was cut off by the layer's.
    """

    def __init__(
        self, message: str, *, layer: int, calls: list[CallRecord], deadline_expired: bool
    ):
        super().__init__(message)
        self.layer = layer
        self.calls = calls
        self.deadline_expired = deadline_expired


__all__ = [
    "MixkitError",
    "ConfigError",
    "DataError",
    "ProviderError",
    "RateLimited",
    "Timeout",
    "LayerFailed",
]
