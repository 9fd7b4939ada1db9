"""The LR range test (``stagetune-lr-find``): where to set a stage's learning rate.

For one stage of the plan (``lr_find.stage``), the engine's range test (:mod:`stagetune.engine.lr_find`,
the same one ``lr=find`` runs inside a run) sweeps the learning rate with that stage's groups
frozen and its slice shape kept. Every one of fastai's suggestions is reported (valley, slide,
minimum, steep); ``lr_find.suggest`` chooses the one printed as the override (valley by default).
A flat or too-short curve gets a warning and no suggestion. The run directory receives
``lr_find.png``, ``lr_find.json`` and TensorBoard events.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from stagetune.app import conf_dir, register_resolvers
from stagetune.build import build
from stagetune.commands.cli import hydra_command, hydra_task
from stagetune.config import optim_of, plan_of, validate
from stagetune.engine.faults import check_checkpoint
from stagetune.engine.lr_find import range_test, write_result
from stagetune.engine.lr_suggest import RangeTest, RangeTestSettings, Suggest
from stagetune.engine.learning_rate import find_shape
from stagetune.engine.plan import Plan
from stagetune.errors import ConfigError, StagetuneError
from stagetune.runs.rundir import RunDir

log = logging.getLogger("stagetune")


def pick_stage(plan: Plan, name: str | None) -> int:
    names = list(plan.stages)
    if name is None:
        return 0
    if name not in names:
        raise ConfigError("lr_find.stage", name, "a stage of the plan: " + ", ".join(names))
    return names.index(name)


def settings_of(cfg: DictConfig) -> tuple[str | None, RangeTestSettings]:
    """``lr_find:``: the stage to test, and the test's settings (the same type as a run's ``plan.find``)."""
    values = OmegaConf.to_container(cfg, resolve=True)
    stage = values.pop("stage", None)
    rules = [rule.value for rule in Suggest]
    if values.get("suggest", Suggest.valley.value) not in rules:
        raise ConfigError("lr_find.suggest", values["suggest"], f"one of {', '.join(rules)}")
    try:
        settings = RangeTestSettings(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError("lr_find", values, str(err).splitlines()[0]) from None
    settings.check("lr_find")
    return stage, settings


def run_range_test(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None) -> RangeTest:
    """Run the test for the stage ``cfg.lr_find.stage`` and write its plot and record into ``run_dir``."""
    with open_dict(cfg):
        stage_name, settings = settings_of(cfg.pop("lr_find"))
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
    stage = plan.ordered[pick_stage(plan, stage_name)]
    if stage.finds_lr:  # lr=find in the config: test the shape it gives
        stage = dataclasses.replace(stage, lr=find_shape(stage.lr))
    result = range_test(model, datamodule, stage, optim_of(cfg), settings, cfg.trainer, run.path)
    write_result(result, run.path, "lr_find", run.tensorboard)
    run.update_metrics(status="completed", experiment=cfg.experiment, lr_find={k: v for k, v in result.as_dict().items() if k not in ("lrs", "losses", "smoothed")})
    return result


def report(result: RangeTest, run: RunDir) -> str:
    value = result.suggested_stage_lr()
    status = "stopped when the loss diverged" if result.diverged else "reached the end of the range"
    rules = "   ".join(f"{rule}: {lr:.2e}" if lr is not None else f"{rule}: -" for rule, lr in result.suggestions().items())
    lines = [f"stage '{result.stage}' (groups {', '.join(result.groups)}): {len(result.lrs)} steps, {status}", rules]
    if value is None:
        lines.append(f"no suggestion: {result.why_none() or f'the {result.suggest.value} rate lies outside the range tested'}")
    else:
        shown = f"{value:.2e}" if isinstance(value, float) else "[" + ",".join(f"{v:.2e}" for v in value) + "]"
        lines += [f"suggested lr ({result.suggest.value}): {result.suggested_lr():.2e}", f"suggested override: plan.stages.{result.stage}.lr={shown}"]
    lines += [f"plot: {run.path / 'lr_find.png'}", f"tensorboard: tensorboard --logdir {run.tensorboard}"]
    return "\n".join(lines)


register_resolvers()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="lr_find")
@hydra_task("stagetune-lr-find")
def hydra_main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    result = run_range_test(cfg, run_dir, list(HydraConfig.get().overrides.task))
    if result.suggested_lr() is None:
        print(f"stagetune-lr-find: warning: no suggestion for stage '{result.stage}' ({result.why_none() or 'the rate lies outside the range'})", file=sys.stderr)
    print(report(result, RunDir(run_dir)))


def main() -> None:
    """Console entry point: ``stagetune-lr-find [key=value ...]``."""
    hydra_command("stagetune-lr-find", hydra_main)
