"""Stages, plans, and the StagePlan callback that applies them.

A plan is a list of stages; each stage says how long it runs, which layer groups train
(``freeze_to``), its learning rate (a number or a slice over the trainable groups), its weight
decay and its schedule. The :class:`StagePlan` callback owns every stage change: it sets
``requires_grad``, builds a fresh optimizer (fastai resets Adam's state when groups unfreeze) and a
fresh schedule sized to the stage, re-wraps the model for DDP so newly trainable parameters are
all-reduced, logs the LR of every layer group, and saves the active stage in checkpoints so a
resumed run continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities.types import LRSchedulerConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from stagetune.config import check_freeze_to
from stagetune.engine.cuda_probe import skip_unavailable_nvml_probe
from stagetune.engine.groups import (
    LayerGroup,
    LearningRate,
    check_partition,
    frozen_norm_layers,
    param_groups,
    set_trainable,
    slice_lrs,
)
from stagetune.engine.optim import OptimSpec, build_optimizer, build_scheduler, check_sparse_training, has_sparse_gradients


@dataclass(frozen=True)
class Stage:
    """One resolved stage of a plan."""

    name: str
    epochs: int
    freeze_to: int
    lr: LearningRate
    wd: float
    schedule: str = "one_cycle"
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5
    train_bn: bool = True


@dataclass(frozen=True)
class Plan:
    """An ordered list of stages and the optimizer they share."""

    stages: tuple[Stage, ...]
    optim: OptimSpec

    @classmethod
    def from_config(cls, plan_cfg, optim_cfg, n_groups: int) -> "Plan":
        """Build from validated config; ``freeze_to`` is checked against the model's groups."""
        check_freeze_to(plan_cfg, n_groups)
        optim = OptimSpec.from_config(optim_cfg)
        stages = []
        for name, s in plan_cfg.stages.items():
            lr = float(s.lr) if isinstance(s.lr, (int, float)) else tuple(float(v) for v in s.lr)
            stages.append(
                Stage(
                    name=str(name),
                    epochs=int(s.epochs),
                    freeze_to=int(s.freeze_to),
                    lr=lr,
                    wd=optim.wd if s.wd is None else float(s.wd),
                    schedule=s.schedule,
                    pct_start=float(s.pct_start),
                    div=float(s.div),
                    div_final=float(s.div_final),
                    train_bn=bool(s.train_bn),
                )
            )
        return cls(tuple(stages), optim)

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def stage_at(self, epoch: int) -> int:
        """Index of the stage that runs in ``epoch`` (the last stage past the end)."""
        end = 0
        for k, stage in enumerate(self.stages):
            end += stage.epochs
            if epoch < end:
                return k
        return len(self.stages) - 1

    def first_epoch(self, index: int) -> int:
        return sum(s.epochs for s in self.stages[:index])

    def trainable_groups(self, index: int, n_groups: int) -> list[int]:
        freeze_to = self.stages[index].freeze_to
        start = freeze_to % n_groups if freeze_to < 0 else freeze_to
        return list(range(start, n_groups))

    def group_lrs(self, index: int, n_groups: int) -> list[float]:
        """Peak LR of each trainable layer group in stage ``index``."""
        trainable = self.trainable_groups(index, n_groups)
        return slice_lrs(self.stages[index].lr, len(trainable))


class StagedModule(pl.LightningModule):
    """A LightningModule whose optimizer comes from the run's plan.

    Subclasses implement :meth:`layer_groups`; the :class:`StagePlan` callback does the rest.
    """

    def layer_groups(self) -> list[LayerGroup]:
        raise NotImplementedError(f"{type(self).__name__} must define layer_groups()")

    def configure_optimizers(self):
        plans = [c for c in self.trainer.callbacks if isinstance(c, StagePlan)]
        if len(plans) != 1:
            raise RuntimeError(f"{type(self).__name__} needs exactly one StagePlan callback, found {len(plans)}")
        return plans[0].configure_optimizers(self.trainer, self)


class StagePlan(Callback):
    """Applies a :class:`Plan` to a :class:`StagedModule` during ``Trainer.fit``."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.active = 0
        self._groups: list[LayerGroup] = []
        self._frozen_norms: list[nn.Module] = []
        self.history: list[dict] = []

    @property
    def state_key(self) -> str:
        return "StagePlan"

    def state_dict(self) -> dict:
        return {"active": self.active, "stages": [s.name for s in self.plan.stages], "history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        names = [s.name for s in self.plan.stages]
        if state_dict["stages"] != names:
            raise ValueError(f"checkpoint was made with stages {state_dict['stages']}, this plan has {names}")
        self.active = int(state_dict["active"])
        self.history = list(state_dict.get("history", []))
        if self._groups:
            self._freeze(self.active)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._groups = list(pl_module.layer_groups())
        check_partition(pl_module, self._groups)
        check_sparse_training(pl_module, trainer.world_size, trainer.gradient_clip_val)
        skip_unavailable_nvml_probe()  # every step of the optimizers built here asks for the accelerator
        self._freeze(self.active)

    def _freeze(self, index: int) -> list[int]:
        stage = self.plan.stages[index]
        trainable = set_trainable(self._groups, stage.freeze_to, stage.train_bn)
        self._frozen_norms = frozen_norm_layers(self._groups, trainable, stage.train_bn)
        frozen = {id(m) for m in self._frozen_norms}
        for group in self._groups:
            for layer in group.norm_layers():
                if id(layer) not in frozen:
                    layer.train()
        return trainable

    def steps_per_epoch(self, trainer: pl.Trainer) -> int:
        return max(1, int(trainer.estimated_stepping_batches) // max(1, trainer.max_epochs))

    def configure_optimizers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        """Optimizer and per-step schedule for the active stage."""
        stage = self.plan.stages[self.active]
        trainable = self._freeze(self.active)
        spec = self.plan.optim
        groups = param_groups(self._groups, trainable, stage.lr, stage.wd, spec.bn_wd, spec.bias_wd)
        optimizer = build_optimizer(groups, spec, sparse=has_sparse_gradients(pl_module))
        total = stage.epochs * self.steps_per_epoch(trainer)
        scheduler = build_scheduler(optimizer, stage.schedule, total, stage.pct_start, stage.div, stage.div_final)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wanted = self.plan.stage_at(trainer.current_epoch)
        if wanted != self.active:
            self.enter_stage(trainer, pl_module, wanted)
        if not self.history or self.history[-1]["stage"] != self.plan.stages[self.active].name:
            self.history.append(self.describe(self.active, trainer.current_epoch))

    def enter_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, index: int) -> None:
        """Switch to stage ``index``: freeze, new optimizer and schedule, new DDP wrapper."""
        self.active = index
        config = self.configure_optimizers(trainer, pl_module)
        trainer.strategy.optimizers = [config["optimizer"]]
        trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(config["lr_scheduler"]["scheduler"], interval="step")]
        rewrap_ddp(trainer, pl_module)

    def describe(self, index: int, epoch: int) -> dict:
        """A row of ``metrics.json``: the stage, its epochs, trainable groups and per-group LR."""
        stage = self.plan.stages[index]
        n = len(self._groups)
        trainable = self.plan.trainable_groups(index, n)
        lrs = self.plan.group_lrs(index, n)
        return {
            "stage": stage.name,
            "index": index,
            "first_epoch": epoch,
            "epochs": stage.epochs,
            "trainable_groups": [self._groups[k].name for k in trainable],
            "lr": {self._groups[k].name: lr for k, lr in zip(trainable, lrs)},
            "wd": stage.wd,
            "wd_kind": self.plan.optim.wd_kind,
            "schedule": stage.schedule,
        }

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        average_norm_buffers(pl_module)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            average_norm_buffers(pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        for layer in self._frozen_norms:
            layer.eval()
        if not trainer.loggers or trainer.global_step % trainer.log_every_n_steps:
            return
        # straight to the loggers: Lightning's self.log costs about a millisecond a value, which
        # is the whole step of a small model
        metrics = {f"lr/{g['name'].removesuffix('/no_wd')}": g["lr"] for g in trainer.optimizers[0].param_groups}
        metrics["stage"] = float(self.active)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def average_norm_buffers(module: nn.Module) -> None:
    """Average BatchNorm running statistics over the ranks, so every rank holds the same model.

    Each rank updates its running statistics from its own shard of the batch (unless
    ``sync_batchnorm``); without this, ranks would validate and checkpoint slightly different
    models. A no-op outside a multi-process run.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
            for buf in (layer.running_mean, layer.running_var):
                torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
                buf.div_(world)


def rewrap_ddp(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Wrap the module in a new DDP so it registers the parameters that now require grad.

    DDP records the trainable parameters when it is built; a parameter unfrozen later would
    otherwise train on each rank's local gradient and the ranks would drift apart silently.
    Building the wrapper also broadcasts rank 0's parameters and buffers to every rank.
    """
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy._setup_model(pl_module)
        strategy._register_ddp_hooks()
