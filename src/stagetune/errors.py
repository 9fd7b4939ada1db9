"""The errors a user can cause, and the exit codes they map to.

Anything raised as a :class:`StagetuneError` is printed as one line (no traceback) by the entry
points: exit code 2 for configuration errors, 1 for runtime failures (bad data, missing files).
"""

from __future__ import annotations

from typing import Any


class StagetuneError(Exception):
    """A failure the user can fix; its message says what to do. ``status`` is what the run's record says of it."""

    exit_code = 1
    status = "failed"


class ConfigError(StagetuneError, ValueError):
    """A configuration error: the key, the value and what is allowed."""

    exit_code = 2

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={_show(value)}: {allowed}")


class DataError(StagetuneError):
    """Input data that cannot be used as given (missing, malformed, empty)."""


class Diverged(StagetuneError):
    """The loss became NaN or infinite."""

    status = "diverged"


class Interrupted(StagetuneError):
    """SIGINT or SIGTERM stopped the run; it can be resumed."""

    status = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def _show(value: Any) -> str:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    return repr(value) if isinstance(value, str) else str(value)
