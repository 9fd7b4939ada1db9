"""The ``stagetune`` command: parse the command line, run (:func:`stagetune.runs.run.train`), say what happened."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from stagetune.app import check_output_overrides, conf_dir
from stagetune.config import check_paths
from stagetune.engine import launch
from stagetune.engine.trainer import check_trainer_overrides
from stagetune.errors import ConfigError
from stagetune.failures import hydra_command, hydra_job_log, in_multirun, task_started, task_wrapper
from stagetune.runs.run import SETUP_INTERRUPTED, Outcome, train
from stagetune.runs.rundir import RunDir, check_resume_overrides
from stagetune.runs.swept import keys_swept_by

PROG = "stagetune"


def record_failure(status: str, message: str) -> bool:
    """A failed job's status and error, in its run directory (rank 0 writes it); whether they were written."""
    return launch.global_rank() == 0 and RunDir(HydraConfig.get().runtime.output_dir).record_failure(status, message)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
@task_started
@task_wrapper(PROG, record=record_failure, log_file=hydra_job_log, interrupted=SETUP_INTERRUPTED.format("SIGINT"))
def hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    swept = keys_swept_by(sys.argv[1:], hydra_cfg.sweeper.get("params")) if in_multirun() else []
    outcome = train(cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task), swept)
    print_outcome(outcome)
    return outcome.value


def print_outcome(outcome: Outcome) -> None:
    """The run's summary on the terminal: the metric that chose the checkpoint, the chosen
    checkpoint's figures on each split side by side, and where to look next."""
    run, record = outcome.run, outcome.record
    if outcome.already_completed:
        print(f"{PROG}: {run.path} already completed; nothing to resume, nothing changed", file=sys.stderr)
    if record is None:
        return
    metric = record["metric"]
    lines = [f"{metric['name']} best {metric['best']:.4f} (chooses the checkpoint)"]
    valid, test, fit = record.get("valid", {}), record.get("test", {}), record.get("train_eval", {})
    names = sorted({key.split("/", 1)[-1] for key in (*valid, *test) if "/" in key})
    parts = [("train", fit, "train_eval")] if fit else []
    parts += [("valid", valid, "val"), ("test", test, "test")]
    if names:
        lines.append(f"{'chosen checkpoint':<20}" + "".join(f"{title:>10}" for title, _, _ in parts))
        for name in names:
            cells = [f"{part[f'{prefix}/{name}']:>10.4f}" if f"{prefix}/{name}" in part else f"{'-':>10}" for _, part, prefix in parts]
            lines.append(f"{name:<20}{''.join(cells)}")
    for key, value in record.get("data", {}).items():
        lines.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    if stopped := record.get("stopped"):
        lines.append(f"stopped after {stopped['epoch']} of {stopped['of']} epochs: {stopped['by']}")
    if record.get("debug"):
        lines.append(f"debug={record['debug']}: a check, not a result (kept apart in outputs/debug/)")
    print("\n".join(lines), file=sys.stderr)
    print(f"run directory: {run.path}", file=sys.stderr)
    print(f"tensorboard:   tensorboard --logdir {run.tensorboard}", file=sys.stderr)


def main() -> None:
    """Console entry point: ``stagetune [key=value ...]``."""
    sys.argv = [sys.argv[0], *launch.hydra_args_for_rank(sys.argv[1:])]
    hydra_command(PROG, hydra_main, checks=lambda: command_line_checks(sys.argv[1:]))


def command_line_checks(argv: list[str]) -> None:
    """What the command line alone can refuse, before Hydra makes a run directory (for ``resume=``, the resumed one)."""
    resume = override_of(argv, "resume")
    check_paths(resume, override_of(argv, "ckpt_path"))
    if resume is not None and launch.global_rank() == 0:  # a started rank's own hydra.run.dir is its launcher's
        check_resume_overrides(resume, [arg for arg in argv if "=" in arg and not arg.startswith("-")])
        RunDir(resume).checked_config()  # not a run (no config.yaml, an unreadable one): refused before Hydra writes train.log in it
    check_unquoted_spaces(argv)
    check_output_overrides(argv)
    check_trainer_overrides(argv)


def check_unquoted_spaces(argv: list[str]) -> None:
    """A word that is no override, after an override, is most likely the rest of a value with a space the shell split:
    say to quote it (Hydra would only name its lexer's error)."""
    for before, arg in zip(argv, argv[1:]):
        if "=" in before and not before.startswith("-") and "=" not in arg and not arg.startswith(("-", "~")):
            key, _, value = before.partition("=")
            raise ConfigError(key.lstrip("+"), f"{value} {arg}", f"'{arg}' is not an override: a value with a space must be quoted, e.g. '{key}={value} {arg}'")


def override_of(argv: list[str], key: str) -> str | None:
    """The value ``key=VALUE`` on the command line gives (``null`` and interpolations left to the config)."""
    for arg in argv:
        name, _, value = arg.partition("=")
        if name.lstrip("+") == key and value not in ("", "null") and "${" not in value:
            return value.strip("'\"")
    return None
