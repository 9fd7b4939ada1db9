"""The plan of a composed config for its model, as ``stagetune-plan`` prints it (nothing trains, no batch is read).

The layer groups come from the model itself. By default it is built on PyTorch's meta device with
its nested ``_target_`` nodes (pretrained weights, a source model to train) left out, so no weight
is read, trained or allocated and the parameter counts are the structure's; with
``build_weights`` it is built exactly as a run builds it. Either way the data module is asked for
the model's keyword arguments (``model_kwargs()``: the class count, the number of users), which
reads its index, not its batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from stagetune.app import conf_dir
from stagetune.build import build
from stagetune.config import optim_of, plan_of, validate
from stagetune.engine.groups import LayerGroup
from stagetune.engine.preview import plan_table
from stagetune.errors import ConfigError


def composed(overrides: Sequence[str]) -> DictConfig:
    """The validated run config for ``overrides``, as ``stagetune`` would compose it."""
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
    except HydraException as err:
        raise ConfigError("overrides", " ".join(overrides), str(err).strip().splitlines()[0]) from None
    return validate(cfg)


def structure_only(node: DictConfig) -> DictConfig:
    """``node`` with its nested ``_target_`` nodes set to null: the model's constructor defaults nothing to load."""
    out = OmegaConf.to_container(node, resolve=True)
    for key, value in list(out.items()):
        if isinstance(value, dict) and "_target_" in value:
            out[key] = None
    return OmegaConf.create(out)


def model_groups(cfg: DictConfig, build_weights: bool = False) -> list[LayerGroup]:
    """The layer groups of the config's model (see the module doc for what is built)."""
    kwargs = build(cfg.data).model_kwargs()
    if build_weights:
        return list(build(cfg.model, **kwargs).layer_groups())
    with torch.device("meta"):
        return list(build(structure_only(cfg.model), **kwargs).layer_groups())


def preview(overrides: Sequence[str], build_weights: bool = False) -> str:
    """The plan table of the config composed from ``overrides``."""
    cfg = composed(overrides)
    return plan_table(plan_of(cfg), model_groups(cfg, build_weights), optim_of(cfg))
