"""Objects from config ``_target_`` nodes, with user errors kept as themselves.

Hydra wraps every exception raised by a ``_target_`` in an InstantiationException; a user error
(bad data, missing weights) must still reach the command line as its own one-line message.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from stagetune.errors import StagetuneError


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate(node, _convert_="all", **kwargs)``, re-raising a target's StagetuneError."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, StagetuneError):
            raise cause from None
        raise
