"""Stages, plans, and the StagePlan callback that applies them.

A plan is an ordered mapping of named stages; each stage says how long it runs, which layer
groups train (``freeze_to``), its learning rate (a number or a slice over the trainable groups),
its weight decay and its schedule. :class:`Stage` and :class:`Plan` are both the Hydra schema of
``plan:`` and the values the code reads (``OmegaConf.to_object``).

The :class:`StagePlan` callback owns every stage change and is the one place the active stage is
read from (``StagePlan.of(trainer).stage``). At each stage start it applies the stage's freezing
(:mod:`~stagetune.engine.freezing`), has Lightning build a fresh optimizer and schedule sized to
the stage (fastai resets Adam's state when groups unfreeze), re-wraps the model for DDP
(:mod:`~stagetune.engine.ddp`), and it logs the LR of every layer group
(:mod:`~stagetune.engine.lr_logging`) and saves the active stage in checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pytorch_lightning as pl
from omegaconf import MISSING
from pytorch_lightning.callbacks import Callback

from stagetune.engine.cuda_probe import skip_unavailable_nvml_probe
from stagetune.engine.ddp import average_norm_buffers, rewrap_ddp
from stagetune.engine.freezing import Freezing
from stagetune.engine.groups import LayerGroup, LearningRate, check_partition, param_groups, slice_lrs
from stagetune.engine.lr_logging import log_group_lrs
from stagetune.engine.lr_suggest import RangeTestSettings
from stagetune.engine.optim import (
    Optim,
    Schedule,
    build_optimizer,
    build_scheduler,
    check_non_negative,
    check_positive,
    check_sparse_training,
    has_sparse_gradients,
)
from stagetune.engine.weight_decay import group_wds, recorded_wd
from stagetune.errors import ConfigError, StagetuneError

# lr=find inside a run: (the live model, its datamodule, the stage with its lr shape, the config key) -> the top rate
LRFinder = Callable[[pl.LightningModule, pl.LightningDataModule, "Stage", str], float]

LR_ALLOWED = "a learning rate is a number > 0, [hi] with hi > 0, or [lo, hi] with 0 < lo <= hi, or find"
FIND = "find"  # lr=find: the LR range test sets the rate when the stage starts (find*K: K times that rate)


def find_factor(value: Any) -> float | None:
    """``find`` -> 1, ``find*K`` -> K (what ``${mul:${plan.lr},K}`` makes of ``plan.lr=find``); else None."""
    if value == FIND:
        return 1.0
    if isinstance(value, str) and value.startswith(FIND + "*"):
        try:
            return float(value[len(FIND) + 1 :])
        except ValueError:
            return None
    return None


def find_shape(lr: Any) -> LearningRate | None:
    """The multipliers of a stage's ``lr`` made of ``find`` terms (``[find*0.01, find]`` -> ``(0.01, 1.0)``); None when it has none."""
    values = list(lr) if isinstance(lr, Sequence) and not isinstance(lr, str) else [lr]
    factors = [find_factor(v) for v in values]
    if all(f is None for f in factors):
        return None
    if any(f is None for f in factors):
        return tuple(factors)  # mixed: check_lr refuses it
    return tuple(factors) if isinstance(lr, Sequence) and not isinstance(lr, str) else factors[0]


def scaled(shape: LearningRate, top: float) -> LearningRate:
    """``shape`` scaled so that its highest end is ``top``."""
    if isinstance(shape, (int, float)):
        return float(top)
    return tuple(float(v) * top / max(shape) for v in shape)


class CacheMode(StrEnum):
    """``plan.cache``: train frozen prefixes from cached outputs when exact (auto), always (on), never (off)."""

    auto = "auto"
    on = "on"
    off = "off"


def check_wd_number(key: str, value: Any) -> None:
    """A weight decay is a finite number >= 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(float(value)):
        raise ConfigError(key, value, "a weight decay is a finite number >= 0")
    check_non_negative(key, value)


def check_lr(key: str, lr: Any) -> None:
    """A learning rate is a number > 0, ``[hi]`` or ``[lo, hi]`` with ``0 < lo <= hi``, or made of ``find`` terms."""
    shape = find_shape(lr)
    if shape is not None:
        if any(v is None for v in (shape if isinstance(shape, tuple) else [shape])):
            raise ConfigError(key, lr, "find cannot be mixed with numbers; " + LR_ALLOWED)
        lr = shape
    values = list(lr) if isinstance(lr, Sequence) and not isinstance(lr, str) else [lr]
    lr = values if isinstance(lr, Sequence) and not isinstance(lr, str) else lr  # shown as the config wrote it
    if not 1 <= len(values) <= 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(key, lr, LR_ALLOWED)
    if not all(math.isfinite(float(v)) and float(v) > 0 for v in values):
        raise ConfigError(key, lr, "every end must be finite and > 0; " + LR_ALLOWED)
    if len(values) == 2 and float(values[0]) > float(values[1]):
        raise ConfigError(key, lr, "the low end is above the high end; " + LR_ALLOWED)


@dataclass
class Stage:
    """One stage of a plan: how long, which groups train, at what rates.

    ``freeze_to`` has no default: it is what makes a stage, so an override that names a stage the
    chosen plan does not have (``plan.stages.typo.epochs=3``) fails instead of adding a stage.
    ``wd`` null takes ``optim.wd``; a number applies to every group; a mapping from layer-group
    name to number (``{biases: 0.1, factors: 0.01}``) sets groups one by one, groups it leaves out
    taking ``optim.wd``. ``name`` is the stage's key in ``plan.stages``.
    """

    name: str = ""  # set from the stage's key in plan.stages; not set by hand
    epochs: int = 1  # how many epochs the stage trains
    freeze_to: int = MISSING  # groups k.. train: -1 the last group only, 0 all; what makes a stage (required)
    lr: Any = "${plan.lr}"  # a number for every trainable group, [hi] (hi/10 before the last), [lo, hi] geometric, or find
    wd: Any = None  # null: optim.wd; a number for every group; or {group: number, ...}
    schedule: Schedule = Schedule.one_cycle  # the LR schedule inside the stage, sized to its steps
    pct_start: float = 0.25  # one-cycle: the share of the stage's steps spent rising to the peak
    div: float = 25.0  # one-cycle: the rise starts at peak / div
    div_final: float = 1e5  # one-cycle: the fall ends at peak / div_final
    train_bn: bool = True  # normalisation layers of frozen groups keep training (fastai's train_bn)

    def __post_init__(self) -> None:
        self.schedule = Schedule(self.schedule)
        if isinstance(self.lr, Sequence) and not isinstance(self.lr, str):
            self.lr = tuple(self.lr)

    def check(self, key: str) -> None:
        """Ranges a schema cannot express; each failure names ``key.field``."""
        if self.epochs < 1:
            raise ConfigError(f"{key}.epochs", self.epochs, "must be >= 1")
        check_lr(f"{key}.lr", self.lr)
        if isinstance(self.wd, Mapping):
            for group, value in self.wd.items():
                check_wd_number(f"{key}.wd.{group}", value)
        elif self.wd is not None:
            check_wd_number(f"{key}.wd", self.wd)
        if not 0 < self.pct_start < 1:
            raise ConfigError(f"{key}.pct_start", self.pct_start, "must be in (0, 1)")
        check_positive(f"{key}.div", self.div)
        check_positive(f"{key}.div_final", self.div_final)

    def group_wds(self, names: Sequence[str], default: float) -> dict[str, float]:
        """The ``wd`` of each layer group named in ``names`` (``default`` where the stage sets none)."""
        return group_wds(self.wd, names, default)

    def recorded_wd(self, names: Sequence[str] | None, default: float) -> float | dict[str, float]:
        """The stage's ``wd`` for run records: one number, or each group's where it sets them by name
        (``names`` None: only the groups it names)."""
        return recorded_wd(self.wd, names, default)

    def check_wd_groups(self, key: str, names: Sequence[str]) -> None:
        """A per-group ``wd`` names only layer groups of the model."""
        if isinstance(self.wd, Mapping):
            for group in self.wd:
                if group not in names:
                    raise ConfigError(f"{key}.wd.{group}", self.wd[group], f"not a layer group; the model's groups: {list(names)}")

    def trainable_groups(self, n_groups: int) -> list[int]:
        start = self.freeze_to % n_groups if self.freeze_to < 0 else self.freeze_to
        return list(range(start, n_groups))

    def group_lrs(self, n_groups: int) -> list[float]:
        """Peak LR of each trainable layer group (a ``find`` stage: its shape, highest group 1)."""
        shape = find_shape(self.lr)
        return slice_lrs(self.lr if shape is None else shape, len(self.trainable_groups(n_groups)))

    @property
    def finds_lr(self) -> bool:
        """Whether the LR range test sets this stage's rate when it starts (``lr=find``)."""
        return find_shape(self.lr) is not None


@dataclass
class Plan:
    """An ordered mapping of named stages (``plan.stages``), run one after the other."""

    lr: Any = 2e-3  # a number, or find: every stage whose lr comes from plan.lr runs the range test when it starts
    stages: dict[str, Stage] = field(default_factory=dict)  # the stages by name, in the order they run
    cache: CacheMode = CacheMode.auto  # train a frozen prefix from its cached outputs: when exact (auto), always (on), never (off)
    find: RangeTestSettings = field(default_factory=RangeTestSettings)  # the range test of lr=find

    def __post_init__(self) -> None:
        self.cache = CacheMode(self.cache)
        if self.lr != FIND and not isinstance(self.lr, bool):
            try:
                self.lr = float(self.lr)  # a number as the float it was typed as before find was allowed
            except (TypeError, ValueError):
                pass  # check() names the key
        if isinstance(self.find, Mapping):
            self.find = RangeTestSettings(**self.find)
        for name, stage in self.stages.items():
            stage.name = str(name)

    @staticmethod
    def check_base_lr(value: Any, key: str = "plan.lr") -> None:
        """``plan.lr`` as written, before the stages' ``${mul:${plan.lr},K}`` read it: a number or ``find``."""
        if value == FIND:
            return
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(value)
            float(value)
        except ValueError:
            raise ConfigError(key, value, "a number > 0, or find (a slice belongs to a stage: plan.stages.NAME.lr=[lo,hi])") from None

    @property
    def ordered(self) -> tuple[Stage, ...]:
        return tuple(self.stages.values())

    def check(self, key: str = "plan") -> None:
        if self.lr != FIND:
            if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool):
                raise ConfigError(f"{key}.lr", self.lr, "a number > 0, or find")
            check_positive(f"{key}.lr", self.lr)
        self.find.check(f"{key}.find")
        if not self.stages:
            raise ConfigError(f"{key}.stages", {}, "a plan needs at least one stage")
        for name, stage in self.stages.items():
            stage.check(f"{key}.stages.{name}")

    def check_groups(self, n_groups: int, key: str = "plan", names: Sequence[str] | None = None) -> None:
        """``freeze_to`` must name a layer group of the model (``-n <= freeze_to < n``); a per-group
        ``wd`` must name only the model's groups (checked when ``names`` is given)."""
        for name, stage in self.stages.items():
            if names is not None:
                stage.check_wd_groups(f"{key}.stages.{name}", names)
            if not -n_groups <= stage.freeze_to < n_groups:
                raise ConfigError(
                    f"{key}.stages.{name}.freeze_to",
                    stage.freeze_to,
                    f"the model has {n_groups} layer groups: allowed {-n_groups}..{n_groups - 1} "
                    "(-1 trains the last group only, 0 trains all)",
                )

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.ordered)

    def stage_at(self, epoch: int) -> int:
        """Index of the stage that runs in ``epoch`` (the last stage past the end)."""
        end = 0
        for k, stage in enumerate(self.ordered):
            end += stage.epochs
            if epoch < end:
                return k
        return len(self.stages) - 1

    def first_epoch(self, index: int) -> int:
        return sum(s.epochs for s in self.ordered[:index])

    def trainable_groups(self, index: int, n_groups: int) -> list[int]:
        return self.ordered[index].trainable_groups(n_groups)

    def group_lrs(self, index: int, n_groups: int) -> list[float]:
        """Peak LR of each trainable layer group in stage ``index``."""
        return self.ordered[index].group_lrs(n_groups)


class StagedModule(pl.LightningModule):
    """A LightningModule whose optimizer comes from the run's plan.

    Subclasses implement :meth:`layer_groups`; the :class:`StagePlan` callback does the rest.
    """

    def layer_groups(self) -> list[LayerGroup]:
        raise NotImplementedError(f"{type(self).__name__} must define layer_groups()")

    def configure_optimizers(self):
        return StagePlan.of(self.trainer).configure_optimizers(self.trainer, self)


class StagePlan(Callback):
    """Applies a :class:`Plan` to a :class:`StagedModule` during ``Trainer.fit``."""

    def __init__(self, plan: Plan, optim: Optim | None = None, finder: LRFinder | None = None) -> None:
        self.plan = plan
        self.optim = optim or Optim()
        self.finder = finder
        self.index = 0
        self.groups: list[LayerGroup] = []
        self.freezing = Freezing()
        self.history: list[dict] = []
        self.found: dict[str, float] = {}  # stage name -> the top rate its range test chose (lr=find)

    @classmethod
    def of(cls, trainer: pl.Trainer) -> "StagePlan":
        """The Trainer's StagePlan: how every other part of stagetune reads the active stage."""
        plans = [c for c in trainer.callbacks if isinstance(c, cls)]
        if len(plans) != 1:
            raise RuntimeError(f"a stagetune Trainer has exactly one StagePlan callback, this one has {len(plans)}")
        return plans[0]

    @property
    def stage(self) -> Stage:
        """The stage that is training now (before fit: the first; after: the last one run)."""
        return self.plan.ordered[self.index]

    def stage_wd(self, stage: Stage) -> dict[str, float]:
        """The stage's ``wd`` of each layer group, in stagetune's ``wd`` convention."""
        return stage.group_wds([g.name for g in self.groups], self.optim.wd)

    @property
    def state_key(self) -> str:
        return "StagePlan"

    def state_dict(self) -> dict:
        return {"active": self.index, "stages": [s.name for s in self.plan.ordered], "history": self.history, "found": self.found}

    def load_state_dict(self, state_dict: dict) -> None:
        names = [s.name for s in self.plan.ordered]
        if state_dict["stages"] != names:
            raise ValueError(f"checkpoint was made with stages {state_dict['stages']}, this plan has {names}")
        self.index = int(state_dict["active"])
        self.history = list(state_dict.get("history", []))
        self.found = dict(state_dict.get("found", {}))
        if self.groups:
            self._freeze()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.groups = list(pl_module.layer_groups())
        check_partition(pl_module, self.groups)
        self.plan.check_groups(len(self.groups), names=[g.name for g in self.groups])
        check_sparse_training(pl_module, trainer.world_size, trainer.gradient_clip_val)
        skip_unavailable_nvml_probe()  # every step of the optimizers built here asks for the accelerator
        self._freeze()

    def _freeze(self) -> list[int]:
        return self.freezing.apply(self.groups, self.stage.freeze_to, self.stage.train_bn)

    def steps_per_epoch(self, trainer: pl.Trainer) -> int:
        return max(1, int(trainer.estimated_stepping_batches) // max(1, trainer.max_epochs))

    def configure_optimizers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        """Optimizer and per-step schedule for the active stage (Lightning's configure_optimizers).

        The layer groups are read from the model again first: with ``sync_batchnorm`` Lightning
        swaps every BatchNorm for a new SyncBatchNorm after :meth:`setup` and before this call, so
        groups that list a norm layer itself (ResNet34's ``bn1``) would otherwise freeze the old one.
        """
        self.groups = list(pl_module.layer_groups())
        stage = self.stage
        trainable = self._freeze()
        if stage.finds_lr and stage.name not in self.found:
            self.found[stage.name] = self.find_lr(trainer, pl_module, stage)
        groups = param_groups(self.groups, trainable, self.stage_lr(self.index), self.stage_wd(stage), self.optim.bn_wd, self.optim.bias_wd)
        optimizer = build_optimizer(groups, self.optim, sparse=has_sparse_gradients(pl_module))
        total = stage.epochs * self.steps_per_epoch(trainer)
        scheduler = build_scheduler(optimizer, stage.schedule, total, stage.pct_start, stage.div, stage.div_final)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def stage_lr(self, index: int) -> LearningRate:
        """Stage ``index``'s ``lr``; for ``lr=find`` its shape scaled to the rate the range test chose."""
        stage = self.plan.ordered[index]
        if not stage.finds_lr:
            return stage.lr
        return scaled(find_shape(stage.lr), self.found[stage.name])

    def find_lr(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: Stage) -> float:
        """Rank 0 runs the range test for ``stage`` (its shape kept); every rank gets the rate, or the error."""
        key = f"plan.stages.{stage.name}.lr"
        if self.finder is None:
            raise ConfigError(key, stage.lr, "find needs a run's range test (stagetune); here give a number")
        outcome: tuple[str, Any] = ("error", "")
        if trainer.is_global_zero:
            try:
                outcome = ("lr", self.finder(pl_module, trainer.datamodule, dataclasses.replace(stage, lr=find_shape(stage.lr)), key))
            except StagetuneError as err:
                outcome = ("error", str(err))
        outcome = trainer.strategy.broadcast(outcome, src=0)
        if outcome[0] == "error":
            raise StagetuneError(outcome[1])
        return float(outcome[1])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wanted = self.plan.stage_at(trainer.current_epoch)
        if wanted != self.index:
            self.enter_stage(trainer, pl_module, wanted)
        if not self.history or self.history[-1]["stage"] != self.stage.name:
            self.history.append(self.describe(self.index, trainer.current_epoch))

    def enter_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, index: int) -> None:
        """Switch to stage ``index``: freeze, new optimizer and schedule, new DDP wrapper."""
        self.index = index
        trainer.strategy.setup_optimizers(trainer)  # calls configure_optimizers above
        rewrap_ddp(trainer, pl_module)

    def describe(self, index: int, epoch: int) -> dict:
        """A row of ``metrics.json``: the stage, its epochs, trainable groups, per-group LR and its wd
        (one number, or each group's where the stage sets them by name)."""
        stage = self.plan.ordered[index]
        n = len(self.groups)
        trainable = stage.trainable_groups(n)
        return {
            "stage": stage.name,
            "index": index,
            "first_epoch": epoch,
            "epochs": stage.epochs,
            "trainable_groups": [self.groups[k].name for k in trainable],
            "lr": {self.groups[k].name: lr for k, lr in zip(trainable, slice_lrs(self.stage_lr(index), len(trainable)))},
            **({"lr_found": self.found[stage.name], "lr_suggest": self.plan.find.suggest.value} if stage.finds_lr else {}),
            "wd": stage.recorded_wd([g.name for g in self.groups], self.optim.wd),
            "wd_kind": self.optim.wd_kind.value,
            "schedule": stage.schedule.value,
        }

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:  # not a one-process Trainer inside a DDP rank (the range test of lr=find)
            average_norm_buffers(pl_module)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and trainer.world_size > 1:
            average_norm_buffers(pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.freezing.hold()
        log_group_lrs(trainer, self.index)
