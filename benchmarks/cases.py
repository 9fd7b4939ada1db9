"""What the benchmarks time: stagetune's Trainer as ``stagetune`` builds it, and a plain PyTorch loop.

Both sides build the model, data and optimizer from the same composed config, so they differ only
in what runs around the step (Lightning, the StagePlan and default callbacks, logging).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image
from torch.nn import functional as F

from benchmarks.harness import StepClock, per_step
from stagetune.app import conf_dir
from stagetune.build import build
from stagetune.config import optim_of, plan_of, validate
from stagetune.engine.groups import param_groups, set_trainable
from stagetune.engine.optim import Optim, build_optimizer, build_scheduler, has_sparse_gradients
from stagetune.engine.plan import Plan
from stagetune.runs.assemble import run_trainer
from stagetune.runs.rundir import RunDir

IMAGES = ["experiment=digits_scratch", "data.size=32", "data.classes=null", "data.train_per_class=null", "data.batch_size=32"]
RATINGS = ["experiment=ratings_synthetic", "data.batch_size=1024"]


def config(overrides: list[str]) -> DictConfig:
    """The validated run config ``stagetune <overrides>`` would use; one stage of one epoch by default."""
    base = ["plan=constant", "plan.stages.all.epochs=1", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0"]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return validate(compose("train", overrides=base + overrides))


def build_run(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule, Plan, Optim]:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build(cfg.data)
    model = build(cfg.model, **data.model_kwargs())
    return data, model, plan_of(cfg), optim_of(cfg)


class EpochClock(pl.Callback):
    """Wall time of each training epoch."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def stagetune_fit(cfg: DictConfig, data=None) -> tuple[StepClock, EpochClock]:
    """Fit through the Trainer ``stagetune`` builds (``train.run_trainer``), plus two clocks."""
    fresh, model, _, _ = build_run(cfg)
    data = data or fresh
    steps, epochs = StepClock(), EpochClock()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = run_trainer(cfg, RunDir(tmp))
        trainer.callbacks.extend([steps, epochs])
        trainer.fit(model, datamodule=data)
    return steps, epochs


def image_loss(model, batch) -> torch.Tensor:
    x, y = batch
    return model.loss(model(x), y)


def rating_loss(model, batch) -> torch.Tensor:
    users, items, ratings = batch
    return F.mse_loss(model(users, items), ratings)


def optimizer_and_schedule(model, plan: Plan, spec: Optim, steps: int, freeze_to: int = 0, train_bn: bool = True):
    """The first stage's optimizer (same param groups as stagetune's) and a constant schedule."""
    stage = plan.ordered[0]
    wd = spec.wd if stage.wd is None else stage.wd
    groups = model.layer_groups()
    trainable = set_trainable(groups, freeze_to, train_bn)
    optimizer = build_optimizer(param_groups(groups, trainable, stage.lr, wd, spec.bn_wd, spec.bias_wd), spec, has_sparse_gradients(model))
    return optimizer, build_scheduler(optimizer, "constant", steps, 0.25, 25.0, 1e5)


def plain_steps(cfg: DictConfig, loss: Callable, warmup: int, steps: int, freeze_to: int = 0, train_bn: bool = True) -> float:
    """Seconds per step of a hand-written loop: forward, backward, optimizer and schedule step."""
    data, model, plan, spec = build_run(cfg)
    data.setup("fit")
    groups = model.layer_groups()
    optimizer, scheduler = optimizer_and_schedule(model, plan, spec, warmup + steps, freeze_to, train_bn)
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


class BareModule(pl.LightningModule):
    """The model under Lightning with nothing else: no callbacks, no logging, no checkpoints."""

    def __init__(self, model, plan: Plan, spec: Optim, loss: Callable, steps: int) -> None:
        super().__init__()
        self.model, self.plan, self.spec, self.loss_fn, self.steps = model, plan, spec, loss, steps

    def training_step(self, batch, batch_idx):
        return self.loss_fn(self.model, batch)

    def configure_optimizers(self):
        optimizer, scheduler = optimizer_and_schedule(self.model, self.plan, self.spec, self.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def bare_lightning_steps(cfg: DictConfig, loss: Callable, warmup: int, steps: int) -> float:
    """Seconds per step of a bare Lightning Trainer: the floor Lightning itself sets."""
    data, model, plan, spec = build_run(cfg)
    clock = StepClock()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(BareModule(model, plan, spec, loss, warmup + steps), datamodule=data)
    return per_step(clock.stamps, warmup)


def write_image_folder(root: Path, per_class: int, classes: int = 4, size: tuple[int, int] = (320, 240)) -> Path:
    """``root/{train,valid}/<class>/<k>.jpg``: photo-sized JPEGs (smooth colour fields plus noise)."""
    rng = np.random.default_rng(0)
    w, h = size
    ramp = np.linspace(0, 1, w)[None, :, None] * np.linspace(0, 1, h)[:, None, None]
    for split, n in (("train", per_class), ("valid", 1)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                pixels = 255 * ramp * rng.random(3) + rng.normal(0, 20, (h, w, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{k}.jpg", quality=90)
    return root


def loader_batches(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Seconds per batch of the training loader alone."""
    data, *_ = build_run(cfg)
    return datamodule_batches(data, warmup, steps)


def datamodule_batches(data, warmup: int, steps: int) -> float:
    """Seconds per batch of a datamodule's training loader, after ``warmup`` batches."""
    data.setup("fit")
    stamps = []
    for k, _ in enumerate(data.train_dataloader()):
        stamps.append(time.perf_counter())
        if k == warmup + steps - 1:
            break
    return per_step(stamps, warmup)
