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
from stagetune.engine.groups import LayerGroup, check_partition, param_groups
from stagetune.engine.learning_rate import LearningRate, base_lr, check_lr, check_plan_lr, find_shape, finds, group_rates, resolved
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


class Mode(StrEnum):
    """Whether a monitored metric is better lower (``min``) or higher (``max``)."""

    min = "min"
    max = "max"


@dataclass
class Until:
    """``until:`` ends a stage on a criterion: early stopping inside one stage.

    After each validation the stage's ``monitor`` counts as improved when it beats the stage's best
    by more than ``min_delta`` (lower for ``mode: min``); after ``patience`` validations without
    improvement the stage ends and the next one starts at the next epoch. ``max_epochs`` caps the
    stage (null: the stage's ``epochs``).
    """

    monitor: str = MISSING  # the logged metric that decides (val/loss); required
    patience: int = 2  # validations without improvement before the stage ends
    mode: Mode = Mode.min  # min: lower is better; max: higher is better
    min_delta: float = 0.0  # an improvement must beat the stage's best by more than this
    max_epochs: int | None = None  # the most epochs the stage runs; null: its epochs

    def __post_init__(self) -> None:
        self.mode = Mode(self.mode)

    def check(self, key: str) -> None:
        if self.patience < 1:
            raise ConfigError(f"{key}.patience", self.patience, "must be >= 1")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError(f"{key}.max_epochs", self.max_epochs, "must be >= 1, or null for the stage's epochs")
        check_non_negative(f"{key}.min_delta", self.min_delta)

    def improved(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (None: nothing yet) by more than ``min_delta``."""
        if best is None:
            return math.isfinite(value)
        return value < best - self.min_delta if self.mode is Mode.min else value > best + self.min_delta


@dataclass
class Stage:
    """One stage of a plan: how long, which groups train, at what rates.

    ``freeze_to`` has no default: it is what makes a stage, so an override that names a stage the
    chosen plan does not have (``plan.stages.typo.epochs=3``) fails instead of adding a stage.
    ``wd`` null takes ``optim.wd``; a number applies to every group; a mapping from layer-group
    name to number (``{biases: 0.1, factors: 0.01}``) sets groups one by one, groups it leaves out
    taking ``optim.wd``. ``name`` is the stage's key in ``plan.stages``. ``until`` (null: none)
    may end the stage before its epochs on a monitored metric (:class:`Until`); ``restore_best``
    then puts back the weights of the stage's best validation before the next stage starts.
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
    until: Until | None = None  # null: none; {monitor, patience, mode, min_delta, max_epochs}: the stage ends once monitor stops improving
    restore_best: bool = False  # with until: the stage's best weights come back before the next stage starts

    def __post_init__(self) -> None:
        self.schedule = Schedule(self.schedule)
        if isinstance(self.until, Mapping):
            self.until = Until(**self.until)
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
        if self.until is not None:
            self.until.check(f"{key}.until")
        elif self.restore_best:
            raise ConfigError(f"{key}.restore_best", True, "needs until.monitor: the metric that says which epoch was best")

    @property
    def max_epochs(self) -> int:
        """The most epochs the stage runs (``until.max_epochs`` when given, else ``epochs``)."""
        return self.until.max_epochs if self.until is not None and self.until.max_epochs is not None else self.epochs

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

    def group_lrs(self, n_groups: int, found: float | None = None) -> list[float]:
        """Peak LR of each trainable layer group; an ``lr=find`` stage needs the rate its range test ``found``."""
        return group_rates(self.lr, len(self.trainable_groups(n_groups)), found)

    @property
    def finds_lr(self) -> bool:
        """Whether the LR range test sets this stage's rate when it starts (``lr=find``)."""
        return finds(self.lr)


@dataclass
class Gradual(Stage):
    """``plan.gradual``: one stage per layer group, each training one more group than the last (ULMFiT's gradual unfreezing).

    Stage ``lastK`` (K = 1..n for a model of n groups) trains the last K groups; every stage takes
    this template's epochs, ``lr`` (spread over its trainable groups by the slice rule), wd,
    schedule and ``until``. ``freeze_to`` is not read.
    """

    freeze_to: int = 0  # not read: stage lastK trains the last K groups

    def stages(self, n_groups: int) -> dict[str, Stage]:
        """The generated stages for a model of ``n_groups`` layer groups, in order."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(Stage) if f.name not in ("name", "freeze_to")}
        return {f"last{k}": Stage(name=f"last{k}", freeze_to=-k if k < n_groups else 0, **fields) for k in range(1, n_groups + 1)}


@dataclass(frozen=True)
class StageView:
    """One stage of the running plan as every reader outside :class:`StagePlan` sees it (read-only).

    ``groups`` are the layer groups that train in it, in model order, ``first_group`` the index of the
    first of them among the model's groups; ``lrs`` each of those groups' peak rate (None for an
    ``lr=find`` stage whose range test has not run yet); ``first_epoch`` and ``last_epoch`` are
    0-based and inclusive (a stage with ``until``: the last it may run, or the one it ended on);
    ``wd`` is the stage's weight decay as records show it (one number, or each group's where the
    stage sets them by name); ``lr`` is the stage's rate as configured
    (``find`` terms included), ``until`` a copy of its criterion.
    """

    name: str
    index: int
    first_epoch: int
    last_epoch: int
    groups: tuple[str, ...]
    first_group: int
    lrs: Mapping[str, float] | None
    wd: float | Mapping[str, float]
    schedule: Schedule
    pct_start: float
    div: float
    div_final: float
    train_bn: bool
    finds_lr: bool
    lr: Any
    until: Until | None
    restore_best: bool

    @property
    def epochs(self) -> int:
        return self.last_epoch - self.first_epoch + 1


@dataclass
class Plan:
    """An ordered mapping of named stages (``plan.stages``), run one after the other."""

    lr: Any = 2e-3  # a number, or find: every stage whose lr comes from plan.lr runs the range test when it starts
    stages: dict[str, Stage] = field(default_factory=dict)  # the stages by name, in the order they run
    gradual: Gradual | None = None  # set: one stage per layer group of the model, generated from this template (plan=gradual)
    cache: CacheMode = CacheMode.auto  # train a frozen prefix from its cached outputs: when exact (auto), always (on), never (off)
    find: RangeTestSettings = field(default_factory=RangeTestSettings)  # the range test of lr=find

    def __post_init__(self) -> None:
        self.cache = CacheMode(self.cache)
        self.lr = base_lr(self.lr)
        if isinstance(self.find, Mapping):
            self.find = RangeTestSettings(**self.find)
        if isinstance(self.gradual, Mapping):
            self.gradual = Gradual(**self.gradual)
        for stage in (*self.stages.values(), *([self.gradual] if self.gradual else [])):
            if stage.lr == "${plan.lr}":  # Stage's default, built in Python rather than composed by Hydra
                stage.lr = self.lr
        for name, stage in self.stages.items():
            stage.name = str(name)

    def for_groups(self, n_groups: int) -> "Plan":
        """The plan a model of ``n_groups`` layer groups runs: this one, or ``plan.gradual``'s stages generated for it."""
        if self.gradual is None:
            return self
        return dataclasses.replace(self, stages=self.gradual.stages(n_groups), gradual=None)

    @property
    def ordered(self) -> tuple[Stage, ...]:
        return tuple(self.stages.values())

    def check(self, key: str = "plan") -> None:
        check_plan_lr(self.lr, f"{key}.lr")
        self.find.check(f"{key}.find")
        if self.gradual is not None:
            if self.stages:
                raise ConfigError(f"{key}.stages", list(self.stages), "plan.gradual generates the stages: give plan.stages or plan.gradual, not both")
            self.gradual.check(f"{key}.gradual")
        elif not self.stages:
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
                    f"the model has {n_groups} layer groups: allowed {-n_groups}..{n_groups - 1} (-1 trains the last group only, 0 trains all)",
                )

    @property
    def total_epochs(self) -> int:
        """The most epochs the plan runs (every stage to its ``epochs``, or its ``until.max_epochs``)."""
        return sum(s.max_epochs for s in self.ordered)

    def length(self, index: int, ran: Mapping[str, int] | None = None) -> int:
        """Epochs of stage ``index``: as many as it ran when it ended early (``ran``: stage name -> epochs), else its most."""
        stage = self.ordered[index]
        return (ran or {}).get(stage.name, stage.max_epochs)

    def end_epoch(self, ran: Mapping[str, int] | None = None) -> int:
        """The number of epochs the whole plan runs, given the stages that ended early."""
        return sum(self.length(k, ran) for k in range(len(self.stages)))

    def stage_at(self, epoch: int, ran: Mapping[str, int] | None = None) -> int:
        """Index of the stage that runs in ``epoch`` (the last stage past the end)."""
        end = 0
        for k in range(len(self.stages)):
            end += self.length(k, ran)
            if epoch < end:
                return k
        return len(self.stages) - 1

    def first_epoch(self, index: int, ran: Mapping[str, int] | None = None) -> int:
        return sum(self.length(k, ran) for k in range(index))

    def trainable_groups(self, index: int, n_groups: int) -> list[int]:
        return self.ordered[index].trainable_groups(n_groups)

    def view(
        self, index: int, names: Sequence[str], default_wd: float, found: Mapping[str, float] | None = None, ran: Mapping[str, int] | None = None
    ) -> StageView:
        """Stage ``index`` read-only, for a model whose layer groups are ``names`` (``found``: the rates of
        ``lr=find`` stages that ran; ``ran``: the epochs of stages that ended early)."""
        stage = self.ordered[index]
        n = len(names)
        trainable = stage.trainable_groups(n) if n else []
        rate = (found or {}).get(stage.name)
        known = bool(trainable) and (not stage.finds_lr or rate is not None)
        first = self.first_epoch(index, ran)
        return StageView(
            name=stage.name,
            index=index,
            first_epoch=first,
            last_epoch=first + self.length(index, ran) - 1,
            groups=tuple(names[k] for k in trainable),
            first_group=trainable[0] if trainable else 0,
            lrs=dict(zip((names[k] for k in trainable), stage.group_lrs(n, rate))) if known else None,
            wd=stage.recorded_wd(list(names) if n else None, default_wd),
            schedule=stage.schedule,
            pct_start=stage.pct_start,
            div=stage.div,
            div_final=stage.div_final,
            train_bn=stage.train_bn,
            finds_lr=stage.finds_lr,
            lr=stage.lr,
            until=dataclasses.replace(stage.until) if stage.until is not None else None,
            restore_best=stage.restore_best,
        )

    def views(
        self, names: Sequence[str], default_wd: float, found: Mapping[str, float] | None = None, ran: Mapping[str, int] | None = None
    ) -> tuple[StageView, ...]:
        """Every stage read-only, in order (see :meth:`view`)."""
        return tuple(self.view(k, names, default_wd, found, ran) for k in range(len(self.stages)))

    def group_lrs(self, index: int, n_groups: int, found: float | None = None) -> list[float]:
        """Peak LR of each trainable layer group in stage ``index`` (an ``lr=find`` stage: given the rate ``found``)."""
        return self.ordered[index].group_lrs(n_groups, found)


def staged_optimizers(module: pl.LightningModule) -> dict:
    """What a LightningModule's ``configure_optimizers`` returns to train by its Trainer's :class:`StagePlan`.

    The optimizer and schedule of the active stage: one param group per trainable layer group at
    its rate and weight decay, a fresh schedule sized to the stage. Lightning calls it again at
    every stage change.
    """
    return StagePlan.of(module.trainer).configure_optimizers(module.trainer, module)


class StagedModule(pl.LightningModule):
    """A LightningModule whose optimizer comes from the Trainer's plan.

    Subclasses implement :meth:`layer_groups`; the :class:`StagePlan` callback does the rest. Any
    other LightningModule works the same when it defines ``layer_groups()`` and returns
    :func:`staged_optimizers` from ``configure_optimizers``.
    """

    def layer_groups(self) -> list[LayerGroup]:
        """The model's layer groups, in order; together they hold every parameter exactly once."""
        raise NotImplementedError(f"{type(self).__name__} must define layer_groups()")

    def configure_optimizers(self):
        return staged_optimizers(self)


class StagePlan(Callback):
    """The Lightning callback that trains a model by a :class:`Plan`: ``pl.Trainer(callbacks=[StagePlan(plan)])``.

    The model (a LightningModule) defines ``layer_groups()`` and returns :func:`staged_optimizers`
    from ``configure_optimizers`` (or subclasses :class:`StagedModule`). At each stage start the
    callback freezes and unfreezes groups, has Lightning build a fresh optimizer and schedule, and
    re-wraps the model for DDP; it ends the fit after the last stage and saves its state (the active
    stage, the rates found, a stage criterion's progress) in checkpoints, so a resumed fit goes on
    exactly. ``optim`` (default: fastai's AdamW settings) is the optimizer every stage builds;
    ``finder`` runs the LR range test of ``lr=find`` stages (stagetune's runs give one).
    Readers get the stages through :attr:`active` and :attr:`stages` (:class:`StageView`).
    """

    def __init__(self, plan: Plan, optim: Optim | None = None, finder: LRFinder | None = None) -> None:
        plan.check()
        self.plan = plan
        self.optim = optim or Optim()
        self.finder = finder
        self.index = 0
        self.groups: list[LayerGroup] = []
        self.freezing = Freezing()
        self.history: list[dict] = []
        self.found: dict[str, float] = {}  # stage name -> the top rate its range test chose (lr=find)
        self.ran: dict[str, int] = {}  # stage name -> the epochs it ran, for stages that ended early (until)
        self.watch: dict[str, Any] = {}  # the active stage's criterion: best value, its epoch, validations without improvement
        self.best_state: dict[str, Any] | None = None  # the active stage's best weights (restore_best)

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

    @property
    def active(self) -> StageView:
        """The stage that is training now, read-only (before fit: the first; after: the last one run)."""
        return self.view(self.index)

    @property
    def stages(self) -> tuple[StageView, ...]:
        """Every stage of the plan, read-only, in order."""
        return self.plan.views([g.name for g in self.groups], self.optim.wd, self.found, self.ran)

    @property
    def layer_groups(self) -> tuple[LayerGroup, ...]:
        """The model's layer groups, in order (known from ``setup`` on)."""
        return tuple(self.groups)

    def view(self, index: int) -> StageView:
        """Stage ``index`` as readers see it (the group names need the model: known from ``setup`` on)."""
        return self.plan.view(index, [g.name for g in self.groups], self.optim.wd, self.found, self.ran)

    def stage_wd(self, stage: Stage) -> dict[str, float]:
        """The stage's ``wd`` of each layer group, in stagetune's ``wd`` convention."""
        return stage.group_wds([g.name for g in self.groups], self.optim.wd)

    @property
    def state_key(self) -> str:
        return "StagePlan"

    def state_dict(self) -> dict:
        names = [s.name for s in self.plan.ordered]
        criterion = {"ran": self.ran, "watch": self.watch, "best_state": self.best_state}
        return {"active": self.index, "stages": names, "history": self.history, "found": self.found, **criterion}

    def load_state_dict(self, state_dict: dict) -> None:
        names = [s.name for s in self.plan.ordered]
        if state_dict["stages"] != names:
            raise ValueError(f"checkpoint was made with stages {state_dict['stages']}, this plan has {names}")
        self.index = int(state_dict["active"])
        self.history = list(state_dict.get("history", []))
        self.found = dict(state_dict.get("found", {}))
        self.ran = dict(state_dict.get("ran", {}))
        self.watch = dict(state_dict.get("watch", {}))
        self.best_state = state_dict.get("best_state")
        if self.groups:
            self._freeze()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "layer_groups", None)):
            raise StagetuneError(f"{type(pl_module).__name__} has no layer_groups(): a model trained by a StagePlan lists its layer groups")
        self.groups = list(pl_module.layer_groups())
        check_partition(pl_module, self.groups)
        generated = self.plan.gradual is not None
        self.plan = self.plan.for_groups(len(self.groups))
        self.plan.check_groups(len(self.groups), names=[g.name for g in self.groups])
        if generated and trainer.max_steps == -1:
            trainer.fit_loop.max_epochs = self.plan.total_epochs
        check_sparse_training(pl_module, trainer.world_size, trainer.gradient_clip_val)
        skip_unavailable_nvml_probe()  # every step of the optimizers built here asks for the accelerator
        self._freeze()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if any("layer_group" not in g for opt in trainer.optimizers for g in opt.param_groups):
            raise StagetuneError(
                f"{type(pl_module).__name__}.configure_optimizers() did not build the plan's optimizer: "
                "return stagetune.staged_optimizers(self) from it (or subclass stagetune.StagedModule)"
            )
        self.fit_epochs(trainer)

    def fit_epochs(self, trainer: pl.Trainer) -> None:
        """The plan bounds the fit: it ends after the last stage (stages that ended early, or a Trainer left at Lightning's 1000 epochs)."""
        if trainer.max_steps == -1 and trainer.max_epochs not in (None, -1):
            trainer.fit_loop.max_epochs = min(trainer.max_epochs, self.plan.end_epoch(self.ran))

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
        total = stage.max_epochs * self.steps_per_epoch(trainer)
        scheduler = build_scheduler(optimizer, stage.schedule, total, stage.pct_start, stage.div, stage.div_final)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def stage_lr(self, index: int) -> LearningRate:
        """Stage ``index``'s ``lr``; for ``lr=find`` its shape scaled to the rate the range test chose."""
        stage = self.plan.ordered[index]
        return resolved(stage.lr, self.found.get(stage.name))

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
        wanted = self.plan.stage_at(trainer.current_epoch, self.ran)
        if wanted != self.index:
            self.leave_stage(pl_module)
            self.enter_stage(trainer, pl_module, wanted)
        if not self.history or self.history[-1]["stage"] != self.stage.name:
            self.history.append(self.describe(self.index, trainer.current_epoch))

    def leave_stage(self, pl_module: pl.LightningModule) -> None:
        """The active stage is over: with ``restore_best``, its best weights come back (and its record says so)."""
        stage = self.stage
        if stage.restore_best and self.best_state is not None:
            pl_module.load_state_dict(self.best_state)
            if self.history and self.history[-1]["stage"] == stage.name:
                self.history[-1]["restored_best"] = True
        self.watch, self.best_state = {}, None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A stage with ``until``: count this validation, and end the stage when its monitor stopped improving."""
        stage = self.stage
        if trainer.sanity_checking or trainer.state.fn != "fit" or stage.until is None or stage.name in self.ran:
            return
        until = stage.until
        value = trainer.callback_metrics.get(until.monitor)
        if value is None:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            raise ConfigError(f"plan.stages.{stage.name}.until.monitor", until.monitor, f"not logged at validation (logged: {logged})")
        value = float(value)
        if until.improved(value, self.watch.get("best")):
            self.watch = {"best": value, "best_epoch": trainer.current_epoch, "wait": 0}
            if stage.restore_best:
                self.best_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        else:
            self.watch["wait"] = self.watch.get("wait", 0) + 1
        stop = trainer.strategy.reduce_boolean_decision(self.watch["wait"] >= until.patience, all=False)
        view = self.active
        ran = trainer.current_epoch - view.first_epoch + 1
        if self.history and self.history[-1]["stage"] == stage.name:
            self.history[-1].update(best=self.watch.get("best"), best_epoch=self.watch.get("best_epoch"), epochs_run=ran)
        if stop and trainer.current_epoch < view.last_epoch:
            self.ran[stage.name] = ran
            self.history[-1]["ended"] = f"{until.monitor} did not improve for {until.patience} validations"
            self.fit_epochs(trainer)

    def enter_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, index: int) -> None:
        """Switch to stage ``index``: freeze, new optimizer and schedule, new DDP wrapper."""
        self.index = index
        trainer.strategy.setup_optimizers(trainer)  # calls configure_optimizers above
        rewrap_ddp(trainer, pl_module)

    def describe(self, index: int, epoch: int) -> dict:
        """A row of ``metrics.json``: the stage, its epochs, trainable groups, per-group LR and its wd
        (one number, or each group's where the stage sets them by name)."""
        view = self.view(index)
        stage = self.plan.ordered[index]
        return {
            "stage": view.name,
            "index": index,
            "first_epoch": epoch,
            "epochs": stage.epochs,
            "trainable_groups": list(view.groups),
            "lr": dict(view.lrs),
            **({"lr_found": self.found[stage.name], "lr_suggest": self.plan.find.suggest.value} if stage.finds_lr else {}),
            "wd": view.wd,
            "wd_kind": self.optim.wd_kind.value,
            "schedule": view.schedule.value,
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
