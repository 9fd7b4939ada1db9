"""Refit (``refit: true``): after valid has chosen, train again on train + valid, then test once.

The standard protocol of published ratings results (Surprise's ``GridSearchCV(refit=True)``):
valid chooses the hyper-parameters (the config) and the epoch count (the chosen checkpoint's
epoch); a second model, started afresh from the same seed, trains on every training rating with
that plan cut to the chosen number of epochs, each stage's schedule sized to its new length (the
one-cycle stretched to the shorter run). It has no held-out part, so nothing is chosen during the
refit: its last state is the one tested, and test is read once, at the end. The refit writes
under ``refit/`` in the run directory (its epoch history and its checkpoint), never over the
first fit's files.
"""

from __future__ import annotations

import copy
import time

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict

from stagetune.build import build
from stagetune.config import optim_of, plan_of
from stagetune.engine.trainer import build_trainer
from stagetune.errors import ConfigError
from stagetune.runs.rundir import RunDir

REFIT_DIR = "refit"


def chosen_epochs(checkpoint_path: str | None, trained_epochs: int) -> int:
    """The epochs the chosen checkpoint had trained (its epoch index + 1); all of them without one."""
    if not checkpoint_path:
        return trained_epochs
    return int(torch.load(checkpoint_path, map_location="cpu", weights_only=True)["epoch"]) + 1


def cut_plan(cfg: DictConfig, epochs: int) -> DictConfig:
    """``cfg`` with its plan cut to the first ``epochs`` epochs: stages after that dropped, the stage
    it ends in shortened (its schedule is built for its own length, so it is stretched to fit)."""
    out = copy.deepcopy(cfg)
    left = epochs
    with open_dict(out):
        for name in list(out.plan.stages):
            if left <= 0:
                del out.plan.stages[name]
                continue
            out.plan.stages[name].epochs = min(int(out.plan.stages[name].epochs), left)
            left -= out.plan.stages[name].epochs
    return out


def check_refit(datamodule, world_size: int) -> None:
    """Refit needs data that can give valid back to training (``with_valid_in_train``), in one process."""
    if not hasattr(datamodule, "with_valid_in_train"):
        raise ConfigError("refit", True, f"{type(datamodule).__name__} cannot give its valid part back to training; use refit=false")
    if world_size > 1:
        raise ConfigError("refit", True, f"refits in one process; this run has {world_size}: use refit=false or trainer.devices=1")


def refit_and_test(cfg: DictConfig, run: RunDir, epochs: int) -> dict:
    """Train a fresh model on train + valid for ``epochs`` epochs of the run's plan, then test it once.

    Returns the record's ``refit`` entry: the epochs, the ratings it trained on, its test metrics and its
    wall and CPU seconds (the run's ``time_s``/``cpu_s`` include them).
    """
    started, cpu_started = time.time(), time.process_time()
    cfg = cut_plan(cfg, epochs)
    out = run.path / REFIT_DIR
    out.mkdir()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build(cfg.data)
    datamodule.with_valid_in_train()
    model = build(cfg.model, **datamodule.model_kwargs())
    args = {**cfg.trainer, "limit_val_batches": 0, "num_sanity_val_steps": 0}
    trainer = build_trainer(plan_of(cfg), optim_of(cfg), args, root_dir=str(out), history_csv=out / "history.csv")
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(out / "refit.ckpt")
    test = trainer.test(model, datamodule=datamodule, verbose=False) if cfg.test and getattr(datamodule, "has_test", False) else []
    return {
        "epochs": trainer.current_epoch,
        "n_train": len(datamodule.train_set),
        "checkpoint": str(out / "refit.ckpt"),
        "test": {k: float(v) for k, v in test[0].items()} if test else {},
        "time_s": round(time.time() - started, 2),
        "cpu_s": round(time.process_time() - cpu_started, 2),
    }
