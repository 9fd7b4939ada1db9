"""Keeping DDP ranks identical through stage changes: a new wrapper, and BatchNorm buffers averaged.

DDP registers only the parameters that require grad when it wraps the model, so a parameter
unfrozen by a later stage would train on each rank's local gradient and the ranks would drift
apart silently. BatchNorm running statistics are buffers, which DDP does not average either.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def rewrap_ddp(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Wrap the module in a new DDP so it registers the parameters that now require grad.

    Building the wrapper also broadcasts rank 0's parameters and buffers to every rank.
    Lightning has no public way to re-wrap a model mid-fit: this uses ``DDPStrategy._setup_model``
    and ``_register_ddp_hooks`` as they are in pytorch-lightning 2.6 (tests/test_ddp.py fails
    loudly if they change).
    """
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy._setup_model(pl_module)
        strategy._register_ddp_hooks()


def average_norm_buffers(module: nn.Module) -> None:
    """Average BatchNorm running statistics over the ranks, so every rank holds the same model.

    Each rank updates its running statistics from its own shard of the batch (unless
    ``sync_batchnorm``); without this, ranks would validate and checkpoint slightly different
    models. A no-op outside a multi-process run.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
            for buf in (layer.running_mean, layer.running_var):
                torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
                buf.div_(world)
