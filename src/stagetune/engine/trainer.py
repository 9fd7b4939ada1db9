"""The one way stagetune builds a ``pytorch_lightning.Trainer``: for runs, the LR finder and source models.

Every Trainer gets the plan's callbacks (StagePlan, training loss, divergence guard, interruption,
and one that keeps Lightning from calling the callbacks' inherited no-op per-batch hooks), atomic
checkpoint writes and stagetune's progress bar; ``trainer:`` in the config passes any other
``Trainer`` argument through, checked against the Trainer's own signature at start-up.
``max_epochs`` and ``max_steps`` belong to the plan.
"""

from __future__ import annotations

import difflib
import inspect
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar

from stagetune.engine.dispatch import SkipInheritedHooks
from stagetune.engine.faults import AtomicCheckpointIO, DivergenceGuard, Interruption, LatestCheckpoint
from stagetune.engine.history import History
from stagetune.engine.optim import Optim
from stagetune.engine.plan import LRFinder, Plan, StagePlan
from stagetune.engine.progress import progress_for
from stagetune.engine.training_loss import TrainingLoss
from stagetune.errors import ConfigError

OWNED = {
    "max_epochs": "the plan sets it: the sum of plan.stages.NAME.epochs",
    "max_steps": "the plan sets the length of a run: plan.stages.NAME.epochs",
    "callbacks": "add callbacks under callbacks.NAME (a _target_ with its arguments)",
    "logger": "choose the logger with logger=NAME",
    "plugins": "stagetune sets its own checkpoint plugin",
    "default_root_dir": "the run directory is hydra.run.dir",
    "enable_checkpointing": "stagetune keeps last.ckpt and the best checkpoint in the run directory",
}
DEFAULTS = {"enable_model_summary": False}


def trainer_arguments() -> list[str]:
    """The keyword arguments of ``pytorch_lightning.Trainer`` in this installation."""
    return [name for name in inspect.signature(pl.Trainer.__init__).parameters if name != "self"]


def trainer_defaults() -> dict[str, Any]:
    """Every Trainer argument stagetune does not set itself, with Lightning's default."""
    params = inspect.signature(pl.Trainer.__init__).parameters
    return {name: params[name].default for name in trainer_arguments() if name not in OWNED}


def check_trainer_overrides(argv: Iterable[str]) -> None:
    """Command-line ``trainer.KEY=...`` overrides, checked before Hydra composes (it would only say "could not override")."""
    keys = {}
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        parts = key.split(".")
        if len(parts) >= 2 and parts[0] == "trainer":
            keys[parts[1]] = value
    check_trainer_args(keys)


def check_trainer_args(args: Mapping[str, Any]) -> None:
    """Every ``trainer.KEY`` must be a Trainer argument that stagetune does not set itself; a value
    Lightning accepts but ignores (a negative ``gradient_clip_val``) is refused."""
    valid = trainer_arguments()
    clip = args.get("gradient_clip_val")
    if clip is not None and not isinstance(clip, str) and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip >= 0):
        raise ConfigError("trainer.gradient_clip_val", clip, "a finite number >= 0 (0 or null: no clipping)")
    for key in args:
        if key in OWNED:
            raise ConfigError(f"trainer.{key}", args[key], OWNED[key])
        if key not in valid:
            choices = [k for k in valid if k not in OWNED]
            close = difflib.get_close_matches(key, choices, n=3, cutoff=0.6) or difflib.get_close_matches(key, choices, n=3, cutoff=0.3)
            hint = f"the closest are {', '.join('trainer.' + c for c in close)}" if close else "see pytorch_lightning.Trainer's arguments"
            raise ConfigError(f"trainer.{key}", args[key], f"not an argument of pytorch_lightning.Trainer; {hint}")


def trainer_kwargs(args: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """Plain keyword arguments; a null value means Lightning's default."""
    if isinstance(args, DictConfig):
        args = OmegaConf.to_container(args, resolve=True)
    return {k: v for k, v in (args or {}).items() if v is not None}


def build_trainer(
    plan: Plan,
    optim: Optim,
    args: Mapping[str, Any] | DictConfig | None = None,
    *,
    callbacks: Iterable[pl.Callback] = (),
    checkpoint: pl.Callback | None = None,
    logger: Any = False,
    root_dir: str | None = None,
    max_steps: int = -1,
    history_csv: str | Path | None = None,
    finder: LRFinder | None = None,
) -> pl.Trainer:
    """A Trainer that applies ``plan`` with ``optim``; ``args`` are the config's ``trainer:`` keys.

    ``max_steps`` > 0 (the LR finder) runs that many steps whatever the plan's epochs; the epoch
    history goes to ``history_csv`` when given; ``finder`` runs the range test of the ``lr=find`` stages.
    With a ``checkpoint`` callback (its ``dirpath`` set), :class:`LatestCheckpoint` keeps ``last.ckpt`` there.
    """
    kwargs = {**DEFAULTS, **trainer_kwargs(args)}
    check_trainer_args(kwargs)
    extra = list(callbacks)
    if kwargs.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in extra):
        extra.append(progress_for(sys.stdout, getattr(checkpoint, "monitor", None)))  # unless the config chose its own bar (callbacks=rich)
    engine = [StagePlan(plan, optim, finder), TrainingLoss(), History(history_csv), DivergenceGuard(), Interruption(), SkipInheritedHooks()]
    try:
        return pl.Trainer(
            max_epochs=-1 if max_steps > 0 else plan.total_epochs,
            max_steps=max_steps,
            callbacks=[*engine, *extra, *([checkpoint, LatestCheckpoint(checkpoint.dirpath)] if checkpoint else [])],
            enable_checkpointing=checkpoint is not None,
            plugins=[AtomicCheckpointIO()],
            logger=logger,
            default_root_dir=root_dir,
            **kwargs,
        )
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise refused_argument(kwargs, args, str(err).strip().splitlines()[0]) from None


def refused_argument(kwargs: Mapping[str, Any], given: Mapping[str, Any] | DictConfig | None, why: str) -> ConfigError:
    """Lightning's refusal of a ``trainer:`` value, naming the key its message is about (one the config
    gave, else any) rather than the whole trainer dict."""
    words = why.lower().replace("`", " ").replace("=", " ").split()
    named = [key for key in kwargs if key in words or key.replace("_", " ") in why.lower()]
    mine = [key for key in named if given is not None and key in given] or named
    if not mine:
        return ConfigError("trainer", "{...}", why)
    return ConfigError(f"trainer.{mine[0]}", kwargs[mine[0]], why)
