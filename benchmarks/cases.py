"""What the benchmarks time: stagetune's Trainer as ``stagetune`` builds it, and a plain PyTorch loop.

Both sides build the model, data and optimizer from the same composed config, so they differ only
in what runs around the step (Lightning, the StagePlan and default callbacks, logging).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch.nn import functional as F

from benchmarks.harness import StepClock, per_step
from stagetune.app import conf_dir
from stagetune.config import validate
from stagetune.groups import param_groups, set_trainable
from stagetune.optim import build_optimizer, build_scheduler
from stagetune.plan import Plan
from stagetune.rundir import RunDir
from stagetune.build import build
from stagetune.train import build_trainer, run_callbacks

IMAGES = ["experiment=digits_scratch", "data.size=32", "data.classes=null", "data.train_per_class=null", "data.batch_size=32"]
RATINGS = ["experiment=ratings_synthetic", "data.batch_size=1024"]


def config(overrides: list[str]) -> DictConfig:
    """The validated run config ``stagetune <overrides>`` would use; one stage of one epoch by default."""
    base = ["plan=constant", "plan.stages.all.epochs=1", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0"]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return validate(compose("train", overrides=base + overrides))


def build_run(cfg: DictConfig):
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build(cfg.data)
    model = build(cfg.model, **data.model_kwargs())
    return data, model, Plan.from_config(cfg.plan, cfg.optim, len(model.layer_groups()))


class EpochClock(pl.Callback):
    """Wall time of each training epoch."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def stagetune_fit(cfg: DictConfig, data=None) -> tuple[StepClock, EpochClock]:
    """Fit through ``train.build_trainer`` with the callbacks ``stagetune`` adds, plus two clocks."""
    fresh, model, plan = build_run(cfg)
    data = data or fresh
    steps, epochs = StepClock(), EpochClock()
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [*run_callbacks(cfg, []), steps, epochs]
        trainer = build_trainer(cfg, plan, RunDir(tmp), callbacks=callbacks)
        trainer.fit(model, datamodule=data)
    return steps, epochs


def image_loss(model, batch) -> torch.Tensor:
    x, y = batch
    return model.loss(model(x), y)


def rating_loss(model, batch) -> torch.Tensor:
    users, items, ratings = batch
    return F.mse_loss(model(users, items), ratings)


def plain_steps(cfg: DictConfig, loss: Callable, warmup: int, steps: int, freeze_to: int = 0, train_bn: bool = True) -> float:
    """Seconds per step of a hand-written loop: forward, backward, optimizer and schedule step."""
    data, model, plan = build_run(cfg)
    data.setup("fit")
    stage, spec = plan.stages[0], plan.optim
    groups = model.layer_groups()
    trainable = set_trainable(groups, freeze_to, train_bn)
    optimizer = build_optimizer(param_groups(groups, trainable, stage.lr, stage.wd, spec.bn_wd, spec.bias_wd), spec)
    scheduler = build_scheduler(optimizer, "constant", warmup + steps, 0.25, 25.0, 1e5)
    model.train()
    if not train_bn:
        for group in groups[:-1]:
            for layer in group.norm_layers():
                layer.eval()
    stamps = []
    for k, batch in enumerate(data.train_dataloader()):
        if k == warmup + steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss(model, batch).backward()
        optimizer.step()
        scheduler.step()
        stamps.append(time.perf_counter())
    return per_step(stamps, warmup)


def loader_batches(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Seconds per batch of the training loader alone."""
    data, _, _ = build_run(cfg)
    data.setup("fit")
    stamps = []
    for k, _ in enumerate(data.train_dataloader()):
        stamps.append(time.perf_counter())
        if k == warmup + steps - 1:
            break
    return per_step(stamps, warmup)
