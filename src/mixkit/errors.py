"""mixkit's one exception tree. Catch `MixkitError` to catch everything mixkit raises on purpose.

MixkitError
├── ConfigError        bad preset / config file / argument (names the field and the fix)
├── DataError          missing or unreadable data, corrupt checkpoint
└── ProviderError      an LLM backend failed
    ├── RateLimited    429 (carries retry_after when the server sent one)
    └── Timeout        a call passed its deadline
"""

from __future__ import annotations


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


__all__ = ["MixkitError", "ConfigError", "DataError", "ProviderError", "RateLimited", "Timeout"]
