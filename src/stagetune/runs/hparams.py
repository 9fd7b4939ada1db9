"""TensorBoard for comparing runs: HParams with the knobs that differ, a Custom Scalars layout.

TensorBoard's HParams tab compares runs by the hyperparameters recorded in each run's own event
files, together with metric scalars of that run. Lightning's default writes a placeholder
``hp_metric = -1`` at the start, which makes the tab useless for comparing; :class:`HParamsSummary`
instead writes once, at the end of fitting, the values that differ between the runs compared with
the run's real metrics: ``hp/best`` (best validation value of the configured metric, the one that
chose the checkpoint), ``hp/test`` (the same metric on test, for the chosen checkpoint) and
``hp/last`` (its value at the last validation). A run that is tested writes them once, after the
test: Lightning opens a new event file for each of fit, validate and test, and TensorBoard reads a
directory's files in name order, which is not creation order in a sweep (``...9`` sorts after
``...10``), so a placeholder written at the end of fitting could be read last and hide the real value. In a sweep job those values
are the swept keys alone (every other key is the same in every job); a single run records the usual
knobs (per-stage learning-rate ends, weight decay and its kind, stage epochs, batch size, the
model's numeric sizes and parameter count) and every key given on the command line. Integers are
written as text, so the table shows ``64``, not ``64.000``.

:class:`ScalarLayout` writes a Custom Scalars layout with each run: every layer group's learning
rate on one chart, the stage index under it (its steps are the stage boundaries), train and valid
loss together, and the run's metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger

from stagetune.engine.plan import StagePlan, StageView
from stagetune.runs.mlflow_run import RunMLflowLogger

HParam = int | float | str | bool


def stage_hparams(stages: Sequence[StageView]) -> dict[str, HParam]:
    """Per stage: epochs, weight decay and the LR given to its lowest and highest group (the rates the optimizer holds).

    An ``lr=find`` stage shows the rates its range test chose, or none before it ran.
    """
    out: dict[str, HParam] = {}
    for stage in stages:
        prefix = f"plan.stages.{stage.name}"
        out[f"{prefix}.epochs"] = stage.epochs
        if stage.lrs is not None:
            out[f"{prefix}.lr_lo"] = min(stage.lrs.values())
            out[f"{prefix}.lr_hi"] = max(stage.lrs.values())
        if isinstance(stage.wd, Mapping):
            out.update({f"{prefix}.wd.{group}": value for group, value in stage.wd.items()})
        else:
            out[f"{prefix}.wd"] = stage.wd
    return out


def _scalar(value: Any) -> HParam | None:
    """A value TensorBoard can show; lists (LR slices) become their text, ``None`` is left out."""
    if value is None:
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return str(value)


def _override_keys(overrides: Iterable[str]) -> list[str]:
    """Config keys named on the command line (``key=value``, ``+key=value``); groups and hydra excluded."""
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" in item and "." in key and not key.startswith("hydra."):
            keys.append(key)
    return keys


def shown(value: HParam) -> HParam:
    """How the HParams table should show a value: integers as text (TensorBoard prints numbers as ``64.000``)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def swept_hparams(cfg: DictConfig, swept: Iterable[str], overrides: Iterable[str]) -> dict[str, HParam]:
    """A sweep job's swept keys with this job's values (a config group by the option chosen)."""
    given = {item.split("=", 1)[0].lstrip("+~"): item.split("=", 1)[1] for item in overrides if "=" in item}
    out: dict[str, HParam] = {}
    for key in swept:
        value = _scalar(OmegaConf.select(cfg, key)) if "." in key else given.get(key)
        if value is not None:
            out[key] = value
    return out


def run_hparams(cfg: DictConfig, stages: Sequence[StageView], n_params: int, overrides: Iterable[str] = (), swept: Iterable[str] = ()) -> dict[str, HParam]:
    """The hyperparameters of one run as the HParams table shows them: a sweep job's swept keys, else the usual knobs."""
    swept = list(swept)
    if swept:
        return {key: shown(value) for key, value in swept_hparams(cfg, swept, overrides).items()}
    out: dict[str, HParam] = {
        "plan.lr": cfg.plan.lr if isinstance(cfg.plan.lr, str) else float(cfg.plan.lr),
        "optim.name": cfg.optim.name,
        "optim.wd": float(cfg.optim.wd),
        "optim.wd_kind": cfg.optim.wd_kind,
        "model.n_params": n_params,
    }
    out.update(stage_hparams(stages))
    if "batch_size" in cfg.data:
        out["data.batch_size"] = cfg.data.batch_size
    for key, value in cfg.model.items():
        if key != "_target_" and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"model.{key}"] = value
    for key in _override_keys(overrides):
        value = _scalar(OmegaConf.select(cfg, key))
        if value is not None:
            out[key] = value
    return {key: shown(value) for key, value in out.items()}


class HParamsSummary(Callback):
    """Writes the run's hyperparameters and real final metrics to its TensorBoard run (and its MLflow run)."""

    def __init__(self, cfg: DictConfig, overrides: Iterable[str] = (), swept: Iterable[str] | None = None) -> None:
        self.cfg = cfg
        self.overrides = list(overrides)
        self.swept = list(swept or [])
        self.fitted: dict[str, float] = {}

    def final_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        """``hp/best`` and ``hp/last`` of the configured metric; absent when never validated."""
        metrics: dict[str, float] = {}
        best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        last = trainer.callback_metrics.get(self.cfg.metric)
        if best is not None:
            metrics["hp/best"] = float(best)
        if last is not None:
            metrics["hp/last"] = float(last)
        return metrics

    def tested(self, trainer: pl.Trainer) -> bool:
        """Whether the run goes on to test its chosen checkpoint (as ``train.evaluate_chosen`` decides)."""
        return bool(self.cfg.get("test", False)) and bool(getattr(trainer.datamodule, "has_test", False))

    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, status: str, metrics: dict[str, float]) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        mlflow = [lg for lg in trainer.loggers if isinstance(lg, RunMLflowLogger)]
        if not (loggers or mlflow) or not trainer.is_global_zero:
            return
        stages = StagePlan.of(trainer).stages
        n_params = sum(p.numel() for p in pl_module.parameters())
        params = run_hparams(self.cfg, stages, n_params, self.overrides, self.swept)
        for logger in mlflow:  # a sweep job's swept keys and, always, the plan
            logger.summary({**params, **stage_hparams(stages)}, status, metrics, step=trainer.global_step)
        params["status"] = status
        metrics = {"hp/best": math.nan, "hp/test": math.nan, "hp/last": math.nan, **metrics}
        for logger in loggers:
            logger.log_hyperparams(params, metrics, step=trainer.global_step)
            logger.experiment.flush()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keeps ``hp/best`` and ``hp/last`` as fitting left them; writes now unless a test follows."""
        self.fitted = self.final_metrics(trainer)
        if not self.tested(trainer):
            self.write(trainer, pl_module, "completed", self.fitted)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The one write of a tested run: ``hp/test`` is the run's metric on test, for the checkpoint that valid chose."""
        value = trainer.callback_metrics.get("test/" + self.cfg.metric.split("/", 1)[-1])
        tested = {"hp/test": float(value)} if value is not None else {}
        self.write(trainer, pl_module, "completed", {**self.fitted, **tested})

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A failed, diverged or pruned run still appears in the table, with what it reached and its status."""
        self.write(trainer, pl_module, getattr(exception, "status", "failed"), {**self.final_metrics(trainer), **self.fitted})


def scalar_layout(metric: str) -> dict[str, dict[str, list]]:
    """The Custom Scalars layout of a run (``SummaryWriter.add_custom_scalars``): charts of tags by regex."""
    name = metric.split("/", 1)[-1]
    return {
        "stagetune": {
            "learning rate of each layer group": ["Multiline", [r"^lr/"]],
            "stage (steps are the stage boundaries)": ["Multiline", [r"^stage$"]],
            "loss: train and valid": ["Multiline", [r"^train/loss", r"^val/loss$"]],
            f"{name}: train and valid": ["Multiline", [rf"^train/{re.escape(name)}", rf"^{re.escape(metric)}$"]],
        }
    }


class ScalarLayout(Callback):
    """Writes :func:`scalar_layout` to the run's TensorBoard when fitting starts (rank 0; a resume writes the same)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in (lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)):
            logger.experiment.add_custom_scalars(scalar_layout(self.metric))
