"""What a run's Trainer holds besides the engine's own: the best checkpoints, the loggers, the callbacks.

The engine's Trainer (:func:`stagetune.engine.trainer.build_trainer`) brings the staged training;
this module adds what a *run* of the product keeps: checkpoints chosen by the run's metric, the
loggers ``logger=`` names, the records a run writes (HParams, scalar layout), and the callbacks a
user names under ``callbacks:``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

from stagetune.build import build
from stagetune.config import optim_of, plan_of
from stagetune.engine.cache import FeatureCache
from stagetune.engine.lr_find import StageFinder
from stagetune.engine.reproducibility import ExactResume
from stagetune.engine.trainer import build_trainer
from stagetune.errors import ConfigError
from stagetune.runs.hparams import HParamsSummary, ScalarLayout
from stagetune.runs.mlflow_run import mlflow_logger
from stagetune.runs.rundir import HISTORY, RunDir
from stagetune.runs.trained import without_start_weights


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose best score and best-k survive a run directory that moved.

    Lightning keeps ``best_model_score`` and the best-k record only when the checkpoint's ``dirpath``
    is today's (it drops them, with a warning, otherwise), so a copied or moved run resumed would
    choose its best only from the epochs after the resume. Here the saved paths are moved into
    today's ``dirpath`` first; tests/test_error_catalogue.py fails when Lightning's state changes.
    """

    PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")

    def load_state_dict(self, state_dict: dict) -> None:
        before = state_dict.get("dirpath")
        if before is None or self.dirpath is None or os.path.normpath(before) == os.path.normpath(self.dirpath):
            return super().load_state_dict(state_dict)

        def moved(path: str) -> str:
            inside = path and Path(path).is_relative_to(before)
            return str(Path(self.dirpath) / Path(path).relative_to(before)) if inside else path

        rebased = {**state_dict, "dirpath": self.dirpath, **{key: moved(state_dict[key]) for key in self.PATHS if key in state_dict}}
        rebased["best_k_models"] = {moved(path): score for path, score in state_dict.get("best_k_models", {}).items()}
        super().load_state_dict(rebased)


def run_checkpoint(cfg: DictConfig, run: RunDir) -> ModelCheckpoint:
    """The best checkpoints by the run's metric (``checkpoint.*``), in ``checkpoints/``; ``last.ckpt`` beside them is the engine's (LatestCheckpoint)."""
    return RunCheckpoint(
        dirpath=run.checkpoints,
        filename="best-epoch{epoch}-step{step}",
        auto_insert_metric_name=False,
        monitor=cfg.metric,
        mode=cfg.metric_mode,
        save_top_k=cfg.checkpoint.save_top_k,
        every_n_epochs=cfg.checkpoint.every_n_epochs,
    )


class MetricCheck(pl.Callback):
    """A validation ``metric`` (``val/...``) must be one the model logs; a typo would stop the run only
    when the first checkpoint is chosen. Checked after Lightning's sanity check, before any training
    (at the first validation when ``trainer.num_sanity_val_steps=0``); other metrics (a training
    loss, logged at the epoch's end) are left to the checkpoint's own check."""

    def __init__(self, metric: str) -> None:
        self.metric, self.checked = metric, not metric.startswith("val/")

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if self.checked:
            return
        self.checked = True
        logged = sorted(k for k in trainer.callback_metrics if k not in ("epoch", "step"))
        if self.metric not in logged:
            close = difflib.get_close_matches(self.metric, logged, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError("metric", self.metric, f"{hint}the model logs: {', '.join(logged) or 'nothing'}")


def run_logger(cfg: DictConfig, run: RunDir) -> list[Logger] | bool:
    """Lightning's loggers chosen by ``logger=``: TensorBoard and CSV under the run directory, MLflow where ``logger.mlflow`` says."""
    loggers: list[Logger] = []
    if cfg.logger.tensorboard:
        tensorboard = run.tensorboard  # a sweep job's is named by what the sweep changed
        loggers.append(TensorBoardLogger(save_dir=str(tensorboard.parent), name=tensorboard.name, version="", default_hp_metric=False))
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run.path), name="csv", version=""))
    if cfg.logger.mlflow.enabled:
        loggers.append(mlflow_logger(cfg, run))
    return loggers or False


def named_callback(name: str, node: DictConfig) -> pl.Callback:
    """``callbacks.NAME``, built; a callback whose optional package is missing is one config-error line."""
    try:
        return build(node)
    except InstantiationException as err:
        cause = err.__cause__
        if not isinstance(cause, ModuleNotFoundError):
            raise
        line = str(cause).splitlines()[0]
        why = "needs rich: pip install 'stagetune[rich]'" if "rich" in line else line
        raise ConfigError(f"callbacks.{name}", node.get("_target_"), why) from None


def run_callbacks(cfg: DictConfig, overrides: list[str], swept: list[str] | None = None) -> list[pl.Callback]:
    """The callbacks a run adds to every stagetune Trainer's own, then those named under ``callbacks:``."""
    named = [named_callback(name, node) for name, node in (cfg.callbacks or {}).items() if node is not None]
    return [ExactResume(), FeatureCache(cfg.plan.cache), HParamsSummary(cfg, overrides, swept), ScalarLayout(cfg.metric), MetricCheck(cfg.metric), *named]


def run_finder(cfg: DictConfig, run: RunDir) -> StageFinder | None:
    """The range test of the run's ``lr=find`` stages (None when every stage has a number)."""
    plan = plan_of(cfg)
    if not any(stage.finds_lr for stage in plan.ordered):
        return None
    model_cfg = without_start_weights(cfg).model  # the live model's weights replace the copy's
    return StageFinder(
        settings=plan.find,
        make_model=lambda datamodule: build(model_cfg, **datamodule.model_kwargs()),
        optim=optim_of(cfg),
        trainer_args=cfg.trainer,
        out_dir=run.path,
        tensorboard=run.tensorboard,
    )


def run_trainer(cfg: DictConfig, run: RunDir) -> pl.Trainer:
    """The Trainer of a run: the engine's, with the run's checkpoints, logger and callbacks."""
    return build_trainer(
        plan_of(cfg),
        optim_of(cfg),
        cfg.trainer,
        callbacks=run_callbacks(cfg, run.overrides(), run.swept()),
        checkpoint=run_checkpoint(cfg, run),
        logger=run_logger(cfg, run),
        root_dir=str(run.path),
        history_csv=run.path / HISTORY,
        finder=run_finder(cfg, run),
    )
