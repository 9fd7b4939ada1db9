"""A progress bar that says which stage and epoch a run is in."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

from stagetune.plan import StagePlan


class StageProgressBar(TQDMProgressBar):
    """Lightning's bar, with the description ``stage NAME (k/n) · epoch e/N``."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        plan = next(c for c in trainer.callbacks if isinstance(c, StagePlan))
        stage = plan.plan.stages[plan.active]
        self.train_progress_bar.set_description(
            f"stage {stage.name} ({plan.active + 1}/{len(plan.plan.stages)}) "
            f"· epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        )
