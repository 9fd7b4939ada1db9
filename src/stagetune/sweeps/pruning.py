"""Pruning inside a trial's run: report the metric at each validation, stop when the pruner says so.

The Optuna sweeper adds this callback to every trial's config (``callbacks.optuna_trial``: the
storage, the study, the trial's number, the metric and the pruner), so the run finds its trial
wherever it is launched: in the worker's own process, on another node, or on any DDP rank.
Only global rank 0 opens the study, reports and asks the pruner; it broadcasts the answer, so every
rank stops at the same validation. A pruned run raises :class:`Pruned` (an ``optuna.TrialPruned``),
which the command line records as ``status: pruned`` in ``metrics.json`` beside the values it
reached, and exits cleanly (code 0).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
import pytorch_lightning as pl
from optuna.trial import TrialState

from stagetune.errors import StagetuneError
from stagetune.runs.rundir import RunDir
from stagetune.sweeps.study import trial_of

log = logging.getLogger("stagetune")


class Pruned(StagetuneError, optuna.TrialPruned):
    """The pruner stopped this trial: not a failure, a decision of the study."""

    status = "pruned"
    exit_code = 0


class TrialPruning(pl.Callback):
    """Reports ``monitor`` at the end of each validation (step = epoch) and prunes when told."""

    def __init__(self, study_name: str, number: int, monitor: str, storage: str | None = None, pruner: Any = None) -> None:
        self.study_name, self.number, self.monitor, self.storage = study_name, int(number), monitor, storage
        self.pruner = pruner if pruner is not None else optuna.pruners.NopPruner()
        self.trial: optuna.Trial | None = None
        self.values: list[float] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        trial = trial_of(self.storage, self.study_name, self.number, self.pruner)
        state = next(t.state for t in trial.study.get_trials(deepcopy=False) if t.number == self.number)
        if state != TrialState.RUNNING:
            log.warning("trial %d of study %s is %s: this run reports nothing to it", self.number, self.study_name, state.name)
            return
        self.trial = trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # the chosen checkpoint's re-validation reports nothing
            return
        prune = False
        if self.trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None and math.isfinite(float(value)):
                self.values.append(float(value))
                self.trial.report(float(value), step=trainer.current_epoch)
                prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self._stop(trainer)

    def _stop(self, trainer: pl.Trainer) -> None:
        epoch = trainer.current_epoch
        if trainer.is_global_zero:
            maximize = self.trial.study.direction == optuna.study.StudyDirection.MAXIMIZE
            best = max(self.values) if maximize else min(self.values)
            RunDir(trainer.default_root_dir).update_metrics(
                metric={"name": self.monitor, "mode": "max" if maximize else "min", "best": best, "last": self.values[-1]},
                epochs=epoch + 1,
                global_step=trainer.global_step,
                pruned={"epoch": epoch, "trial": self.number, "study": self.study_name},
            )
        value = f" ({self.monitor} {self.values[-1]:.4g})" if self.values else ""
        raise Pruned(f"trial {self.number} of study {self.study_name} pruned after epoch {epoch}{value}")
