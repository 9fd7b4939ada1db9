"""Objects from config ``_target_`` nodes, with user errors kept as themselves.

Hydra wraps every exception raised by a ``_target_`` in an InstantiationException; a user error
(bad data, missing weights) must still reach the command line as its own one-line message.

A node's ``groups`` key is stagetune's, not the target's: layer-group patterns on parameter names
(:func:`~stagetune.engine.groups.groups_by_pattern`), so ``model.groups`` splits any model, a
user's own ``_target_`` included. ``groups: null`` keeps the model's own ``layer_groups()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from stagetune.engine.groups import groups_by_pattern
from stagetune.errors import StagetuneError


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate(node, _convert_="all", **kwargs)``, re-raising a target's StagetuneError; ``groups`` applied."""
    patterns = None
    if isinstance(node, DictConfig) and "groups" in node:
        patterns = OmegaConf.to_container(node.groups) if isinstance(node.groups, DictConfig) else node.groups
        node = OmegaConf.masked_copy(node, [k for k in node if k != "groups"])
    try:
        built = instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, StagetuneError):
            raise cause from None
        raise
    if patterns is not None:
        give_groups(built, patterns)
    return built


def give_groups(model: Any, patterns: Mapping[str, str]) -> None:
    """Make ``model.layer_groups()`` match ``patterns`` (checked now, so a bad pattern stops the run before it starts).

    The groups are matched again at each call, so modules swapped in later (``sync_batchnorm``) are the ones grouped.
    """
    groups_by_pattern(model, patterns)
    model.pattern_groups = dict(patterns)  # the feature cache reads it: a model's features() follow its own groups only
    model.layer_groups = partial(groups_by_pattern, model, model.pattern_groups)
