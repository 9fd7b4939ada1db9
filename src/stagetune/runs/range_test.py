"""The LR range test as a run of its own (``stagetune-lr-find``): where to set a stage's learning rate.

For one stage of the plan (``lr_find.stage``), the engine's range test (:mod:`stagetune.engine.lr_find`,
the same one ``lr=find`` runs inside a run) sweeps the learning rate with that stage's groups
frozen and its slice shape kept. Every one of fastai's suggestions is kept (valley, slide,
minimum, steep); ``lr_find.suggest`` chooses the one reported as the override (valley by default).
The run directory receives ``lr_find.png``, ``lr_find.json`` and TensorBoard events.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict

from stagetune.build import build
from stagetune.config import lr_find_settings, optim_of, plan_of, validate
from stagetune.engine.faults import check_checkpoint
from stagetune.engine.learning_rate import find_shape
from stagetune.engine.lr_find import range_test, write_result
from stagetune.engine.lr_suggest import RangeTest
from stagetune.engine.plan import Plan
from stagetune.errors import ConfigError, StagetuneError
from stagetune.runs.rundir import RunDir


def pick_stage(plan: Plan, name: str | None) -> int:
    names = list(plan.stages)
    if name is None:
        return 0
    if name not in names:
        raise ConfigError("lr_find.stage", name, "a stage of the plan: " + ", ".join(names))
    return names.index(name)


def run_range_test(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None) -> RangeTest:
    """Run the test for the stage ``cfg.lr_find.stage`` and write its plot and record into ``run_dir``."""
    with open_dict(cfg):
        settings = lr_find_settings(cfg.pop("lr_find"))
    cfg = validate(cfg)
    run = RunDir(run_dir)
    run.save_config(cfg, overrides or [])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build(cfg.data)
    model = build(cfg.model, **datamodule.model_kwargs())
    if cfg.ckpt_path:
        state = check_checkpoint(cfg.ckpt_path, "ckpt_path")
        if not isinstance(state.get("state_dict"), dict):
            raise StagetuneError(f"ckpt_path: {cfg.ckpt_path} holds no model state_dict")
        model.load_state_dict(state["state_dict"])
    plan = plan_of(cfg)
    plan.check_groups(len(model.layer_groups()))
    stage = plan.ordered[pick_stage(plan, settings.stage)]
    if stage.finds_lr:  # lr=find in the config: test the shape it gives
        stage = dataclasses.replace(stage, lr=find_shape(stage.lr))
    result = range_test(model, datamodule, stage, optim_of(cfg), settings, cfg.trainer, run.path)
    write_result(result, run.path, "lr_find", run.tensorboard)
    run.update_metrics(
        status="completed", experiment=cfg.experiment, lr_find={k: v for k, v in result.as_dict().items() if k not in ("lrs", "losses", "smoothed")}
    )
    return result
