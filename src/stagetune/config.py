"""Structured-config schemas and the start-up checks that turn a bad value into one clear line.

Hydra composes YAML from ``conf/``; :func:`validate` merges it onto these schemas (types) and then
checks the values (ranges, choices, slices) before any work starts. Every failure is a
:class:`~stagetune.errors.ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stagetune.errors import ConfigError

SCHEDULES = ("one_cycle", "constant", "cosine")
OPTIMIZERS = ("adam", "sgd", "sgd_scratch")
WD_KINDS = ("l2", "decoupled")
CACHE_MODES = ("auto", "on", "off")
METRIC_MODES = ("min", "max")


@dataclass
class StageConfig:
    """One stage of a plan: how long, which groups train, at what rates."""

    epochs: int = 1
    freeze_to: int = 0
    lr: Any = "${plan.lr}"
    wd: float | None = None
    schedule: str = "one_cycle"
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5
    train_bn: bool = True


@dataclass
class PlanConfig:
    lr: float = 2e-3
    stages: dict[str, StageConfig] = field(default_factory=dict)
    cache: str = "auto"


@dataclass
class OptimConfig:
    name: str = "adam"
    wd: float = 0.01
    wd_kind: str = "decoupled"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-5
    momentum: float = 0.9
    nesterov: bool = False
    bn_wd: bool = False
    bias_wd: bool = False


@dataclass
class TrainerConfig:
    """Keys passed to ``pytorch_lightning.Trainer``; ``max_epochs`` comes from the plan."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    sync_batchnorm: bool = False
    log_every_n_steps: int = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    enable_progress_bar: bool = True
    use_distributed_sampler: bool = False
    deterministic: Any = False
    benchmark: bool | None = None


@dataclass
class LoggerConfig:
    tensorboard: bool = True
    log_graph: bool = False


@dataclass
class RunConfig:
    experiment: str = "default"
    seed: int = 42
    metric: str = "val/loss"
    metric_mode: str = "min"
    resume: str | None = None
    ckpt_path: str | None = None
    test: bool = True
    callbacks: Any = None
    model: Any = None
    data: Any = None
    plan: PlanConfig = field(default_factory=PlanConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def _typed(cfg: DictConfig) -> DictConfig:
    """Merge onto the schema, turning OmegaConf's type errors into a ConfigError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        msg = str(err).splitlines()[0]
        raise ConfigError(key, getattr(err, "value", None) or "?", msg) from None
    return merged


def check_lr(key: str, lr: Any) -> None:
    """A learning rate is a number > 0, ``[hi]`` or ``[lo, hi]`` with ``0 < lo <= hi``."""
    allowed = "a learning rate is a number > 0, [hi] with hi > 0, or [lo, hi] with 0 < lo <= hi"
    values = list(lr) if isinstance(lr, (list, tuple, ListConfig)) else [lr]
    if not 1 <= len(values) <= 2 or not all(_is_number(v) for v in values):
        raise ConfigError(key, lr, allowed)
    if not all(math.isfinite(float(v)) and float(v) > 0 for v in values):
        raise ConfigError(key, lr, "every end must be finite and > 0; " + allowed)
    if len(values) == 2 and float(values[0]) > float(values[1]):
        raise ConfigError(key, lr, "the low end is above the high end; " + allowed)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, "allowed: " + ", ".join(allowed))


def _positive(key: str, value: float, *, strict: bool = True) -> None:
    ok = value > 0 if strict else value >= 0
    if not (math.isfinite(value) and ok):
        raise ConfigError(key, value, "must be " + ("> 0" if strict else ">= 0"))


def check_plan(cfg: DictConfig, optim: DictConfig) -> None:
    """Values of the plan and optimizer that a schema cannot express."""
    _choice("plan.cache", cfg.cache, CACHE_MODES)
    _positive("plan.lr", cfg.lr)
    if not cfg.stages:
        raise ConfigError("plan.stages", {}, "a plan needs at least one stage")
    for name, stage in cfg.stages.items():
        key = f"plan.stages.{name}"
        if stage.epochs < 1:
            raise ConfigError(f"{key}.epochs", stage.epochs, "must be >= 1")
        check_lr(f"{key}.lr", stage.lr)
        if stage.wd is not None:
            _positive(f"{key}.wd", stage.wd, strict=False)
        _choice(f"{key}.schedule", stage.schedule, SCHEDULES)
        if not 0 < stage.pct_start < 1:
            raise ConfigError(f"{key}.pct_start", stage.pct_start, "must be in (0, 1)")
        _positive(f"{key}.div", stage.div)
        _positive(f"{key}.div_final", stage.div_final)
    _choice("optim.name", optim.name, OPTIMIZERS)
    _choice("optim.wd_kind", optim.wd_kind, WD_KINDS)
    _positive("optim.wd", optim.wd, strict=False)
    _positive("optim.eps", optim.eps)
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError("optim.betas", optim.betas, "two numbers in [0, 1)")
    if not 0 <= optim.momentum < 1:
        raise ConfigError("optim.momentum", optim.momentum, "must be in [0, 1)")


def check_freeze_to(plan: DictConfig, n_groups: int) -> None:
    """``freeze_to`` must name a layer group of the model: ``-n <= freeze_to < n``."""
    for name, stage in plan.stages.items():
        if not -n_groups <= stage.freeze_to < n_groups:
            raise ConfigError(
                f"plan.stages.{name}.freeze_to",
                stage.freeze_to,
                f"the model has {n_groups} layer groups: allowed {-n_groups}..{n_groups - 1} "
                "(-1 trains the last group only, 0 trains all)",
            )


def check_target(key: str, node: Any) -> None:
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(key, node, "needs a config group with a _target_ (pick one with " f"{key}=NAME)")


def validate(cfg: DictConfig) -> DictConfig:
    """Return the typed, resolved config or raise :class:`ConfigError` on the first bad value."""
    typed = _typed(cfg)
    check_target("model", typed.model)
    check_target("data", typed.data)
    check_plan(typed.plan, typed.optim)
    _choice("metric_mode", typed.metric_mode, METRIC_MODES)
    for key in ("resume", "ckpt_path"):
        path = typed[key]
        if path is not None and not Path(path).exists():
            raise ConfigError(key, path, "no such file or directory")
    return typed
