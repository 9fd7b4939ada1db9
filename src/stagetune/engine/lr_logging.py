"""The learning rate of every layer group, written straight to the loggers each logging step.

Lightning's ``self.log`` costs about a millisecond a value, which is the whole step of a small
model, so the values go to ``logger.log_metrics`` directly, at the steps the training loss is
logged on. The active stage's index is logged beside them, so stage boundaries show on a chart.
"""

from __future__ import annotations

import pytorch_lightning as pl


def layer_group_tag(param_group_name: str) -> str:
    """``lr/<layer group>``: the no-decay half and the frozen-BN variant share the group's tag.

    A body group is ``body_early/frozen_bn`` while frozen and ``body_early`` once unfrozen; one
    tag for both keeps the group's LR on one curve across the stage boundary.
    """
    return "lr/" + param_group_name.removesuffix("/no_wd").removesuffix("/frozen_bn")


def group_lrs(optimizer) -> dict[str, float]:
    """The LR of each layer group, keyed by :func:`layer_group_tag`."""
    return {layer_group_tag(g["name"]): g["lr"] for g in optimizer.param_groups}


def log_group_lrs(trainer: pl.Trainer, stage_index: int) -> None:
    if not trainer.loggers or trainer.global_step % trainer.log_every_n_steps:
        return
    metrics = {**group_lrs(trainer.optimizers[0]), "stage": float(stage_index)}
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
