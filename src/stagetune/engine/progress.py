"""Progress that reads well where it goes: a bar on a terminal, one line per epoch in a log file.

On a terminal, Lightning's bar says which stage and epoch a run is in and the latest loss, and each
finished epoch is printed above it as a row of the history table, so the epochs stay on screen.
When the output is not a terminal (a log file, a pipe, a SLURM job), a bar would write every step;
the same rows are printed instead, one line per epoch, and nothing else. Either way the plan's
table (:mod:`~stagetune.engine.preview`) comes first, when training starts.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

from stagetune.engine.history import History, Table, columns
from stagetune.engine.plan import StagePlan
from stagetune.engine.preview import stages_table
from stagetune.engine.training_loss import TrainingLoss


def plan_text(trainer: pl.Trainer) -> str | None:
    """The running plan's table, on rank 0 (None elsewhere)."""
    if not trainer.is_global_zero:
        return None
    plan = StagePlan.of(trainer)
    return stages_table(plan.stages, plan.layer_groups, plan.optim)


class EpochRows:
    """Prints each epoch's history row through ``write``, with a header when the columns change."""

    def __init__(self) -> None:
        self.table: Table | None = None

    def lines(self, trainer: pl.Trainer) -> list[str]:
        history = History.of(trainer)
        if history is None or not history.rows or not trainer.is_global_zero:
            return []
        row = history.rows[-1]
        out = []
        if self.table is None or set(columns([row])) - set(self.table.keys):
            self.table = Table(columns([row]), [s.name for s in StagePlan.of(trainer).stages])
            out.append(self.table.header())
        out.append(self.table.line(row))
        return out


class StageProgressBar(TQDMProgressBar):
    """Lightning's bar, described ``stage NAME (k/n) · epoch e/N``, showing the loss and the run's metric."""

    def __init__(self, monitor: str | None = None) -> None:
        super().__init__()
        self.monitor = monitor
        self.rows = EpochRows()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        text = plan_text(trainer)
        if text is not None:
            self.print(text)
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        plan = StagePlan.of(trainer)
        active = plan.active
        self.train_progress_bar.set_description(
            f"stage {active.name} ({active.index + 1}/{len(plan.stages)}) · epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        for line in self.rows.lines(trainer):
            self.print(line)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The latest step's loss and the monitored metric: each shown once, short enough for the bar."""
        metrics: dict[str, Any] = {}
        meter = next((c for c in trainer.callbacks if isinstance(c, TrainingLoss)), None)
        if meter is not None and meter.last is not None:
            metrics["loss"] = f"{float(meter.last):.4g}"
        if self.monitor and self.monitor in trainer.callback_metrics:
            metrics[self.monitor] = f"{float(trainer.callback_metrics[self.monitor]):.4g}"
        return metrics


class EpochLines(ProgressBar):
    """No bar: one history row per epoch on ``stream`` (standard output by default)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.rows = EpochRows()
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        text = plan_text(trainer) if self._enabled else None
        if text is not None:
            print(text, file=self.stream or sys.stdout, flush=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled:
            return
        stream = self.stream or sys.stdout
        for line in self.rows.lines(trainer):
            print(line, file=stream, flush=True)


def progress_for(stream: IO[str], monitor: str | None = None) -> ProgressBar:
    """A bar when ``stream`` is a terminal, else one line per epoch."""
    isatty = getattr(stream, "isatty", None)
    return StageProgressBar(monitor) if callable(isatty) and isatty() else EpochLines(stream)
