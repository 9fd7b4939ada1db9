"""A progress bar that says which stage and epoch a run is in, and the latest training loss."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

from stagetune.engine.plan import StagePlan
from stagetune.engine.training_loss import TrainingLoss


class StageProgressBar(TQDMProgressBar):
    """Lightning's bar, with the description ``stage NAME (k/n) · epoch e/N`` and ``loss``."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        plan = StagePlan.of(trainer)
        self.train_progress_bar.set_description(
            f"stage {plan.stage.name} ({plan.index + 1}/{len(plan.plan.stages)}) "
            f"· epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        )

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        meter = next((c for c in trainer.callbacks if isinstance(c, TrainingLoss)), None)
        if trainer.training and meter is not None and meter.last is not None:
            metrics["loss"] = f"{float(meter.last):.4g}"
        return metrics
