"""Tiny plans and a short fit under one, for tests of the engine and the models."""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import OmegaConf

from stagetune.config import plan_of, typed
from stagetune.engine.plan import Plan, Stage, StagePlan
from tests.tiny import quiet_trainer


def make_plan(train_bn: bool, n_groups: int = 3) -> Plan:
    cfg = typed(
        OmegaConf.create(
            {
                "plan": {
                    "lr": 1e-2,
                    "stages": {
                        "frozen": {"epochs": 2, "freeze_to": -1, "lr": [1e-2], "train_bn": train_bn, "pct_start": 0.5},
                        "unfrozen": {"epochs": 2, "freeze_to": 0, "lr": [1e-4, 1e-2], "div": 5.0, "pct_start": 0.3},
                    },
                }
            }
        )
    )
    plan = plan_of(cfg)
    plan.check_groups(n_groups)
    return plan


def fit(
    model: pl.LightningModule,
    data: pl.LightningDataModule,
    *stages: Stage,
    batches: int | None = 2,
    callbacks: tuple[pl.Callback, ...] = (),
    **kwargs,
) -> pl.Trainer:
    """Fit ``model`` through ``stages`` with a few batches per epoch (all with ``batches=None``)."""
    plan = Plan(stages={s.name: s for s in stages})
    trainer = quiet_trainer(
        max_epochs=plan.total_epochs,
        callbacks=[StagePlan(plan), *callbacks],
        limit_train_batches=batches,
        num_sanity_val_steps=0,
        accelerator="cpu",
        **kwargs,
    )
    trainer.fit(model, datamodule=data)
    return trainer
