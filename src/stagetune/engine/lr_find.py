"""The LR range test: one owner for ``stagetune-lr-find`` and for ``lr=find`` inside a run.

For one stage, the model is frozen as that stage says and trained for ``steps`` batches while the
learning rate grows exponentially from ``start_lr`` to ``end_lr``; the test stops early once the
smoothed loss diverges. The stage's LR shape is kept: with a slice ``[lo, hi]`` the swept rate is
the highest group's and every other group keeps its ratio to it, so the suggestion is the same
slice scaled. The test runs in a Trainer of its own (one process, no logger, no validation) on a
model it is given; the curve is written as ``<name>.png``, ``<name>.json`` and TensorBoard scalars.

Inside a run (:class:`StageFinder`), the test runs when a stage whose ``lr`` is ``find`` starts,
on a copy of the model as it is then (after the stages before it), in rank 0, with the run's
random state put back afterwards, so that the run goes on as it would have with that rate given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.seed import isolate_rng
from torch.utils.tensorboard import SummaryWriter

from stagetune.engine.learning_rate import shares
from stagetune.engine.lr_suggest import RangeTest, RangeTestSettings
from stagetune.engine.optim import Optim, Schedule
from stagetune.engine.plan import Plan, Stage
from stagetune.engine.trainer import build_trainer, trainer_kwargs
from stagetune.errors import Diverged, StagetuneError
from stagetune.figures import new_figure

ONE_PROCESS = {"devices": 1, "num_nodes": 1, "strategy": "auto", "limit_val_batches": 0, "num_sanity_val_steps": 0}


class LRSweep(Callback):
    """Sets every param group's LR each step and records the loss; stops once it diverges."""

    def __init__(self, settings: RangeTestSettings) -> None:
        self.settings = settings
        self.shares: list[float] = []
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.diverged = False
        self._average = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = trainer.optimizers[0].param_groups
        top = max(g["lr"] for g in groups)
        self.shares = [g["lr"] / top for g in groups]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        lr = self.settings.lr_at(len(self.lrs))
        for group, share in zip(trainer.optimizers[0].param_groups, self.shares):
            group["lr"] = lr * share
        self.lrs.append(lr)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        beta = self.settings.beta
        self._average = beta * self._average + (1 - beta) * loss
        smooth = self._average / (1 - beta ** len(self.lrs))
        self.losses.append(loss)
        self.smoothed.append(smooth)
        lowest = min(self.smoothed)
        if not math.isfinite(smooth) or smooth > self.settings.diverge * lowest:
            self.diverged = True
            trainer.should_stop = True


def range_test(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    stage: Stage,
    optim: Optim,
    settings: RangeTestSettings,
    trainer_args: Any = None,
    root_dir: str | Path | None = None,
) -> RangeTest:
    """Sweep the LR of ``stage`` (its ``lr`` a number or slice: the shape kept) over ``model``, in place."""
    groups = model.layer_groups()
    stage = dataclasses.replace(stage, epochs=1, schedule=Schedule.constant)
    sweep = LRSweep(settings)
    trainer = build_trainer(
        Plan(stages={stage.name: stage}),
        optim,
        {**trainer_kwargs(trainer_args), **ONE_PROCESS},
        callbacks=[sweep],
        root_dir=None if root_dir is None else str(root_dir),
        max_steps=settings.steps,
    )
    try:
        trainer.fit(model, datamodule=datamodule)
    except Diverged:  # a non-finite loss is where the range test ends
        sweep.diverged = True
    trainable = stage.trainable_groups(len(groups))
    result = RangeTest(
        stage=stage.name,
        groups={groups[k].name: share for k, share in zip(trainable, shares(stage.lr, len(trainable)))},
        lrs=sweep.lrs[: len(sweep.losses)],
        losses=sweep.losses,
        smoothed=sweep.smoothed,
        diverged=sweep.diverged,
        suggest=settings.suggest,
    )
    if not result.smoothed or not math.isfinite(result.smoothed[0]):
        raise StagetuneError(f"the loss was not finite from the first step at lr {settings.start_lr}: lower the range test's start_lr")
    return result


def plot(result: RangeTest) -> Figure:
    """Loss against LR (log scale), the smoothed curve, and the suggested rate (when there is one)."""
    fig = new_figure(6, 4)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label="smoothed loss")
    suggested = result.suggested_lr()
    if suggested is not None:
        ax.axvline(suggested, color="C3", ls="--", label=f"{result.suggest.value} {suggested:.2e}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    low, high = min(finite), min(max(finite), 4 * min(finite))
    margin = 0.05 * max(high - low, abs(low), 1e-12)
    ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel("learning rate (highest group)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test, stage '{result.stage}'" + ("" if suggested is not None else " (no suggestion)"))
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return fig


def write_result(result: RangeTest, out_dir: Path, name: str, tensorboard: Path, tag: str = "lr_find") -> Figure:
    """``out_dir/<name>.json`` (the curve, every rule's suggestion), ``<name>.png``, and TensorBoard under ``tag``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    figure = plot(result)
    figure.savefig(out_dir / f"{name}.png", dpi=90, bbox_inches="tight")
    with SummaryWriter(str(tensorboard)) as writer:
        for step, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed)):
            writer.add_scalar(f"{tag}/lr", lr, step)
            writer.add_scalar(f"{tag}/loss", loss, step)
            writer.add_scalar(f"{tag}/smoothed_loss", smooth, step)
        writer.add_figure(f"{tag}/loss_vs_lr", figure)
    return figure


@dataclass
class StageFinder:
    """``lr=find`` inside a run: the range test for a stage, on a copy of the model as the stage starts.

    ``make_model(datamodule)`` builds a model of the run's kind (its weights are replaced by the live model's);
    the curve goes to ``out_dir/lr_find-<stage>.json`` and ``.png`` and to TensorBoard.
    """

    settings: RangeTestSettings
    make_model: Callable[[pl.LightningDataModule], pl.LightningModule]
    optim: Optim
    trainer_args: Any
    out_dir: Path
    tensorboard: Path

    def __call__(self, pl_module: pl.LightningModule, datamodule: pl.LightningDataModule, stage: Stage, key: str) -> float:
        """The suggested top rate for ``stage`` (its ``lr`` the shape to keep); a curve without one stops the run."""
        model = self.make_model(datamodule)
        model.load_state_dict(pl_module.state_dict())
        outer = datamodule.trainer
        try:
            with isolate_rng(), tempfile.TemporaryDirectory() as scratch:
                quiet = {**trainer_kwargs(self.trainer_args), "enable_progress_bar": False}  # the run's own bar carries on
                result = range_test(model, datamodule, stage, self.optim, self.settings, quiet, scratch)
        finally:
            datamodule.trainer = outer
        write_result(result, self.out_dir, f"lr_find-{stage.name}", self.tensorboard, f"lr_find/{stage.name}")
        value = result.suggested_lr()
        if value is None:
            why = result.why_none() or f"the {result.suggest.value} rule's rate lies outside the range tested"
            raise StagetuneError(
                f"{key}=find: {why} (curve in {self.out_dir / f'lr_find-{stage.name}.png'}); give {key} a number, "
                "or try plan.find.suggest=valley|slide|minimum|steep"
            )
        print(
            f"stagetune: {key}=find: {value:.2e} ({result.suggest.value}); curve in {self.out_dir / f'lr_find-{stage.name}.png'}",
            file=sys.stderr,
        )
        return value
