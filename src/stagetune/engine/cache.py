"""Exact feature caching: a stage that freezes a prefix of the layer groups trains from its outputs.

When a stage freezes groups ``[0, k)`` completely (their normalisation layers too: ``train_bn``
false, no dropout in them) and the training inputs are the same every epoch (no random
augmentation), the prefix maps each example to the same tensor in every epoch of the stage. The
:class:`FeatureCache` callback computes those tensors once at the stage's first epoch, hands the
Trainer a loader over ``(features, target)`` that visits the examples in the same
``(seed, epoch)`` order, and sets the model's ``input_group`` so its training step runs groups
``[k, n)`` only. Validation keeps the images (the reports show them). At the stage's end the
original loader comes back.

A model opts in with ``features(x, upto_group)``, ``forward_from(features, group_index)`` and an
``input_group`` attribute read by its ``training_step``; batches are ``(inputs, targets)``. Its
own groups only: given other groups by name patterns (``pattern_groups``, ``model.groups``) it trains uncached.
Under ``plan.cache=auto`` a stage where the cache would not be exact trains as usual with one info
line saying why; ``plan.cache=on`` turns that into a configuration error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stagetune.engine.groups import LayerGroup
from stagetune.engine.loaders import epoch_loader
from stagetune.engine.plan import CacheMode, StagePlan, StageView
from stagetune.errors import ConfigError

log = logging.getLogger("stagetune")

MEMORY_FRACTION = 0.25  # the cache may take at most this share of the machine's memory
RANDOM_LAYERS = (nn.modules.dropout._DropoutNd,)


def memory_budget() -> int:
    """Bytes the cache may hold: a quarter of physical memory."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_FRACTION)


def opts_in(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("features", "forward_from", "input_group"))


def inexact_reason(trainer: pl.Trainer, pl_module: nn.Module, stage: StageView, groups: Sequence[LayerGroup]) -> str | None:
    """Why caching the frozen prefix of ``stage`` (``groups``: the model's layer groups) would change training; None when exact."""
    first = stage.first_group
    if not opts_in(pl_module):
        return f"{type(pl_module).__name__} does not implement features()/forward_from()"
    if getattr(pl_module, "pattern_groups", None):
        return "its layer groups come from model.groups patterns, which its features()/forward_from() do not follow"
    if trainer.world_size > 1:
        return f"DDP with {trainer.world_size} processes (each rank would need its own cache)"
    prefix = groups[:first]
    if stage.train_bn and any(g.norm_layers() for g in prefix):
        return f"stage {stage.name!r} trains the normalisation layers of its frozen groups (train_bn: true)"
    random = [type(m).__name__ for g in prefix for top in g.modules for m in top.modules() if isinstance(m, RANDOM_LAYERS)]
    if random:
        return f"the frozen groups hold random layers ({', '.join(sorted(set(random)))})"
    augment = getattr(trainer.datamodule, "augment", None)
    if augment is None:
        return "the datamodule does not say whether its training data is augmented (no `augment` attribute)"
    if augment:
        return "data.augment is true: random augmentation changes the inputs every epoch"
    return None


class FeatureCache(Callback):
    """Trains the unfrozen groups of a stage from cached outputs of its frozen prefix (see module doc)."""

    def __init__(self, mode: CacheMode | str = CacheMode.auto) -> None:
        self.mode = CacheMode(mode)
        self._cached_stage: int | None = None
        self._decided: set[int] = set()
        self._original: object | None = None  # the fit loop's own training source, while a cached one stands in

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.mode is not CacheMode.on or stage != "fit":
            return
        plan = StagePlan.of(trainer)
        for s in plan.stages:
            if s.first_group == 0:
                continue
            reason = inexact_reason(trainer, pl_module, s, plan.layer_groups)
            if reason:
                raise ConfigError("plan.cache", "on", f"stage {s.name!r} cannot be cached exactly: {reason}; use auto or off")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mode is CacheMode.off:
            return
        plan = StagePlan.of(trainer)
        active = plan.active
        index = active.index
        if self._cached_stage is not None and self._cached_stage != index:
            self._restore(trainer, pl_module, reload=True)
        if self._cached_stage == index or index in self._decided:
            return
        self._decided.add(index)
        first = active.first_group
        if first == 0:
            return
        name = active.name
        reason = inexact_reason(trainer, pl_module, active, plan.layer_groups)
        if reason is None:
            loader = self._cached_loader(trainer, pl_module, first, name)
            if loader is None:
                return
            self._swap(trainer, loader)
            pl_module.input_group = first
            self._cached_stage = index
            return
        if self.mode is CacheMode.on:
            raise ConfigError("plan.cache", "on", f"stage {name!r} cannot be cached exactly: {reason}; use auto or off")
        log.info("plan.cache: stage %r trains without the feature cache: %s", name, reason)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._cached_stage is not None:
            self._restore(trainer, pl_module, reload=False)

    def _cached_loader(self, trainer: pl.Trainer, pl_module: nn.Module, first: int, name: str) -> DataLoader | None:
        """A loader over (prefix output, target) that visits examples in the original order."""
        original = trainer.datamodule.train_dataloader()
        if original.batch_size is None:
            log.info("plan.cache: stage %r trains without the feature cache: its loader hands out whole batches", name)
            return None
        sequential = DataLoader(
            original.dataset,
            batch_size=original.batch_size,
            num_workers=original.num_workers,
            collate_fn=original.collate_fn,
            generator=torch.Generator(),  # its seed draw must not move the global RNG dropout uses
        )
        features, targets = compute_features(pl_module, sequential, first, memory_budget())
        if features is None:
            message = f"the cached outputs would exceed {MEMORY_FRACTION:.0%} of memory"
            if self.mode is CacheMode.on:
                raise ConfigError("plan.cache", "on", f"stage {name!r}: {message}; use auto or off")
            log.info("plan.cache: stage %r trains without the feature cache: %s", name, message)
            return None
        sampler = original.sampler
        log.info(
            "plan.cache: stage %r trains from cached outputs of %d groups for %d examples (%.1f MB)",
            name,
            first,
            len(targets),
            features.numel() * features.element_size() / 1e6,
        )
        return epoch_loader(
            TensorDataset(features, targets),
            original.batch_size,
            shuffle=bool(getattr(sampler, "shuffle", True)),
            drop_last=original.drop_last,
            whole_batches=True,  # a batch is one slice of the cached tensors, not batch_size lookups
            seed=getattr(sampler, "seed", None),
        )

    def _swap(self, trainer: pl.Trainer, source: DataLoader, reload: bool = True) -> None:
        """Point the fit loop at another training loader (now when ``reload``, else at the next fit)."""
        if self._original is None:
            self._original = training_source(trainer)
        set_training_source(trainer, source, reload)

    def _restore(self, trainer: pl.Trainer, pl_module: nn.Module, reload: bool) -> None:
        """The model takes images again; the original loader returns (now when ``reload``)."""
        pl_module.input_group = 0
        self._cached_stage = None
        set_training_source(trainer, self._original, reload)
        self._original = None


def training_source(trainer: pl.Trainer) -> object:
    """The fit loop's training loader source (opaque), to put back after a swap with :func:`set_training_source`.

    Lightning has no public API for it: ``fit_loop._data_source``, as in pytorch-lightning 2.6
    (tests/test_engine_shape.py fails loudly if it changes).
    """
    return trainer.fit_loop._data_source


def set_training_source(trainer: pl.Trainer, source: DataLoader | object, reload: bool) -> None:
    """Point the fit loop at ``source`` (a loader, or what :func:`training_source` returned) mid-fit, positioned at the current epoch.

    Lightning has no public API for this: it uses ``fit_loop._data_source``, ``_combined_loader``,
    ``setup_data``, ``_DataLoaderSource`` and lightning_fabric's ``_set_sampler_epoch`` as they are
    in pytorch-lightning 2.6 (tests/test_engine_shape.py fails loudly if they change).
    """
    from lightning_fabric.utilities.data import _set_sampler_epoch
    from pytorch_lightning.trainer.connectors.data_connector import _DataLoaderSource

    loop = trainer.fit_loop
    loop._data_source = _DataLoaderSource(source, "train_dataloader") if isinstance(source, DataLoader) else source
    loop._combined_loader = None
    if reload:
        loop.setup_data()
        for loader in loop._combined_loader.flattened:
            _set_sampler_epoch(loader, loop.epoch_progress.current.processed)


def compute_features(model: nn.Module, loader: DataLoader, upto_group: int, budget: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Outputs of groups ``[0, upto_group)`` for every example, in dataset order, on the CPU.

    The prefix runs in eval mode under ``no_grad``: with its normalisation layers frozen and no
    random layers, that is exactly what it computes in training. Returns (None, None) when the
    result would exceed ``budget`` bytes.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks, targets = [], []
    n = len(loader.dataset)
    with torch.no_grad():
        for x, y in loader:
            out = model.features(x.to(device), upto_group).cpu()
            if not chunks and out.element_size() * out[0].numel() * n > budget:
                model.train(was_training)
                return None, None
            chunks.append(out)
            targets.append(y)
    model.train(was_training)
    return torch.cat(chunks), torch.cat(targets)
