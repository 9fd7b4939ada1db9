"""The run's config: its schema, and the start-up checks that turn a bad value into one clear line.

Hydra composes YAML from ``conf/``; :func:`validate` merges it onto :class:`RunConfig`, whose
parts are the engine's own types (:class:`~stagetune.engine.plan.Plan`,
:class:`~stagetune.engine.optim.Optim`), so a type or an allowed value is declared once, and then
runs each type's own checks before any work starts. ``trainer:`` takes any argument of
``pytorch_lightning.Trainer``, checked against its signature. Every failure is a
:class:`~stagetune.errors.ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stagetune.engine.learning_rate import check_base_lr
from stagetune.engine.lr_suggest import RangeTestSettings
from stagetune.engine.optim import Optim
from stagetune.engine.plan import Plan, Stage
from stagetune.engine.trainer import check_trainer_args, trainer_defaults
from stagetune.errors import ConfigError


class MetricMode(StrEnum):
    """Whether the run's ``metric`` is better lower or higher."""

    min = "min"
    max = "max"


@dataclass
class MLflowConfig:
    """``logger.mlflow``: whether the run logs to MLflow, and where (:mod:`stagetune.runs.mlflow_run`)."""

    enabled: bool = False
    tracking_uri: str | None = None  # a tracking server (http://host:5000) or store; None: sqlite in paths.outputs


@dataclass
class LoggerConfig:
    """Which of Lightning's loggers a run writes to; any combination (TensorBoard and CSV in the run directory)."""

    tensorboard: bool = True  # TensorBoardLogger, RUN_DIR/tensorboard/
    csv: bool = False  # CSVLogger, RUN_DIR/csv/metrics.csv
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)  # MLflow 3: SQLite in paths.outputs, or a tracking server (the mlflow extra)


@dataclass
class CheckpointConfig:
    """What the run's ModelCheckpoint keeps besides ``last.ckpt``: the best by ``metric``."""

    save_top_k: int = 1  # how many best checkpoints to keep; -1 keeps every one it saves
    every_n_epochs: int = 1  # consider saving a best checkpoint every N epochs

    def check(self, key: str) -> None:
        if self.save_top_k < -1 or self.save_top_k == 0:
            raise ConfigError(f"{key}.save_top_k", self.save_top_k, "keep at least one best checkpoint: 1, 2, ... or -1 for all")
        if self.every_n_epochs < 1:
            raise ConfigError(f"{key}.every_n_epochs", self.every_n_epochs, "must be 1 or more")


@dataclass
class PathsConfig:
    """Where runs, data and made-once artifacts live; absolute paths, set by ``paths=`` (``conf/paths/``)."""

    root: str = MISSING  # the project root: $STAGETUNE_ROOT, else the checkout above the working directory
    outputs: str = MISSING  # run directories: outputs/<experiment>/<time>/
    data: str = MISSING  # datasets read from files (pets)
    cache: str = MISSING  # made-once artifacts (source models): $STAGETUNE_CACHE, else ~/.cache/stagetune


@dataclass
class RunConfig:
    """The whole run: what it trains (model, data, plan, optim), how (trainer), and what it records."""

    experiment: str = "default"  # set by experiment=NAME; names the outputs/ folder
    seed: int = 42  # the initialisation and the batch order
    metric: str = "val/loss"  # what picks the best checkpoint and what the run returns to sweepers
    metric_mode: MetricMode = MetricMode.min  # whether metric is better lower or higher
    resume: str | None = None  # a run directory to continue in place (takes no other overrides)
    ckpt_path: str | None = None  # a checkpoint file to start a new run from
    test: bool = True  # evaluate the chosen checkpoint on the test split once, at the end
    refit: bool = False  # after valid chose, train again on train + valid for the chosen epochs, and test that model once (runs/refit.py)
    print_config: bool = False  # print the composed config as a tree before the run starts
    debug: str | None = None  # set by debug=NAME: the run is a check, never a result (docs: howto/running.md, "Debug runs")
    callbacks: Any = field(default_factory=dict)  # extra Lightning callbacks by name, each a _target_ with its arguments (callbacks=NAME)
    model: Any = None  # the model, a _target_ with its arguments (model=NAME)
    data: Any = None  # the data module, a _target_ with its arguments (data=NAME)
    plan: Plan = field(default_factory=Plan)  # the stages (plan=NAME)
    optim: Optim = field(default_factory=Optim)  # the optimizer every stage builds (optim=NAME)
    trainer: dict[str, Any] = field(default_factory=dict)  # any pytorch_lightning.Trainer argument (trainer=NAME)
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # which loggers (logger=NAME)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # the best checkpoints kept beside last.ckpt
    paths: PathsConfig = field(default_factory=PathsConfig)  # where runs, data and the cache live (paths=NAME)


@dataclass
class LrFindConfig(RangeTestSettings):
    """``stagetune-lr-find``'s ``lr_find:``: the range test's settings (a run's ``plan.find``) and the stage to test."""

    stage: str | None = None  # a stage of the plan (plan.stages.NAME); null: the first stage


@contextmanager
def omegaconf_errors(within: str = "") -> Iterator[None]:
    """OmegaConf's type, value and missing-key errors as a ConfigError naming the key (under ``within``)."""
    try:
        yield
    except OmegaConfBaseException as err:
        key = ".".join(k for k in (within, getattr(err, "full_key", None)) if k) or "config"
        msg = str(err).splitlines()[0]
        choices = re.match(r"Invalid value '.*', expected one of \[(.*)\]", msg)
        raise ConfigError(key, getattr(err, "value", None) or "?", f"one of {choices[1]}" if choices else msg) from None


def defaults_of(schema: type, *leave_out: str) -> dict[str, Any]:
    """A schema's defaults as plain YAML values (no types), for Hydra to compose overrides onto."""
    values = OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)
    return {k: v for k, v in values.items() if k not in leave_out}


def register_defaults() -> None:
    """Give Hydra every key's default at composition, taken from the schema (never restated in YAML).

    ``train.yaml`` starts from ``stagetune_defaults`` (every :class:`RunConfig` key, and under
    ``trainer`` every ``pytorch_lightning.Trainer`` argument with Lightning's default), and a plan's
    stages from ``stage/defaults`` (every :class:`Stage` key but ``freeze_to``), so
    ``optim.eps=1e-8`` or ``plan.stages.frozen.div=10`` override a key the YAML does not state.
    Types and choices are checked afterwards by :func:`validate`, in one clear line.
    """
    store = ConfigStore.instance()
    store.store(name="stagetune_defaults", node={**defaults_of(RunConfig), "trainer": trainer_defaults()})
    store.store(group="stage", name="defaults", node=defaults_of(Stage, "name", "freeze_to"))
    store.store(name="lr_find_defaults", node={"lr_find": defaults_of(LrFindConfig)})


def lr_find_settings(node: DictConfig) -> LrFindConfig:
    """``lr_find:`` typed and checked."""
    with omegaconf_errors("lr_find"):
        settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LrFindConfig), node))
    settings.check("lr_find")
    return settings


def typed(cfg: DictConfig) -> DictConfig:
    """Merge onto the schema and resolve; a value of the wrong type or choice is a ConfigError."""
    with omegaconf_errors():
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        check_stage_names(merged.plan)
        check_base_lr(merged.plan.lr)
        OmegaConf.resolve(merged)
    return merged


def check_stage_names(plan: DictConfig) -> None:
    """A stage without ``freeze_to`` was named by an override, not defined by the chosen plan."""
    defined = [name for name in plan.stages if not OmegaConf.is_missing(plan.stages[name], "freeze_to")]
    for name in plan.stages:
        if name not in defined:
            raise ConfigError(
                f"plan.stages.{name}",
                OmegaConf.to_container(plan.stages[name]),
                f"the chosen plan has no stage {name!r} (its stages: {', '.join(defined) or 'none'}); a new stage needs at least freeze_to",
            )


def plan_of(cfg: DictConfig) -> Plan:
    """The typed plan of a typed config (the value the engine reads)."""
    with omegaconf_errors():
        return OmegaConf.to_object(cfg.plan)


def optim_of(cfg: DictConfig) -> Optim:
    """The typed optimizer settings of a typed config."""
    with omegaconf_errors():
        return OmegaConf.to_object(cfg.optim)


def check_target(key: str, node: Any) -> None:
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(key, node, f"needs a config group with a _target_ (pick one with {key}=NAME)")


def validate(cfg: DictConfig) -> DictConfig:
    """Return the typed, resolved config or raise :class:`ConfigError` on the first bad value."""
    run = typed(cfg)
    check_target("model", run.model)
    check_target("data", run.data)
    batch_size = run.data.get("batch_size")
    if isinstance(batch_size, int) and batch_size < 1:  # every data module batches; checked here before any is built
        raise ConfigError("data.batch_size", batch_size, "must be >= 1")
    plan_of(run).check("plan")
    optim_of(run).check("optim")
    check_trainer_args(run.trainer)
    with omegaconf_errors():
        OmegaConf.to_object(run.checkpoint).check("checkpoint")
    if not 0 <= run.seed < 2**32:
        raise ConfigError("seed", run.seed, "an integer from 0 to 4294967295 (numpy's and torch's seed range)")
    check_paths(run.resume, run.ckpt_path)
    return run


def check_paths(resume: str | None, ckpt_path: str | None) -> None:
    """``resume`` names a run directory and ``ckpt_path`` a checkpoint file, both existing."""
    for key, path in (("resume", resume), ("ckpt_path", ckpt_path)):
        if path is not None and not Path(path).exists():
            raise ConfigError(key, path, "no such file or directory")
    if resume is not None and not Path(resume).is_dir():
        raise ConfigError("resume", resume, "a run directory (outputs/EXPERIMENT/TIME), not a file; a checkpoint file is ckpt_path=FILE")
    if ckpt_path is not None and Path(ckpt_path).is_dir():
        raise ConfigError("ckpt_path", ckpt_path, "a checkpoint file (e.g. RUN/checkpoints/last.ckpt), not a directory; to continue a run, resume=RUN")


register_defaults()
