"""The ``stagetune-lr-find`` command: parse, run the range test (:mod:`stagetune.runs.range_test`), report.

A flat or too-short curve gets a warning and no suggestion; otherwise the suggested override.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from stagetune.app import conf_dir, register_resolvers
from stagetune.engine.lr_suggest import RangeTest
from stagetune.engine.trainer import check_trainer_overrides
from stagetune.failures import hydra_command, hydra_job_log, task_started, task_wrapper
from stagetune.runs.range_test import run_range_test
from stagetune.runs.rundir import RunDir

PROG = "stagetune-lr-find"


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
@task_started
@task_wrapper(PROG, log_file=hydra_job_log)
def hydra_main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    result = run_range_test(cfg, run_dir, list(HydraConfig.get().overrides.task))
    if result.suggested_lr() is None:
        print(f"{PROG}: warning: no suggestion for stage '{result.stage}' ({result.why_none() or 'the rate lies outside the range'})", file=sys.stderr)
    print(report(result, RunDir(run_dir)))


def main() -> None:
    """Console entry point: ``stagetune-lr-find [key=value ...]``."""
    hydra_command(PROG, hydra_main, checks=lambda: check_trainer_overrides(sys.argv[1:]))
