"""The ``stagetune`` command: compose the config, validate it, build the run, fit, test, record.

Read top to bottom, :func:`train` is a whole run: the data and model are built from config
(``_target_``), the plan is checked against the model's layer groups, the Trainer gets the
StagePlan callback, and the run directory receives the config, checkpoints, TensorBoard events
and ``metrics.json``. The return value is the configured metric, so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from stagetune.config import validate
from stagetune.errors import StagetuneError
from stagetune.plan import Plan, StagePlan
from stagetune.progress import StageProgressBar
from stagetune.rundir import RunDir

log = logging.getLogger("stagetune")

PACKAGE_DIR = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The ``conf/`` directory: the source tree's (editable installs) or the one in the wheel."""
    for candidate in (PACKAGE_DIR.parents[1] / "conf", PACKAGE_DIR / "conf"):
        if (candidate / "train.yaml").exists():
            return candidate
    raise RuntimeError(f"stagetune's conf/ directory was not found next to {PACKAGE_DIR}")


def _run_dir(resume: str | None, fresh: str) -> str:
    """``hydra.run.dir``: the directory being resumed, else a fresh timestamped one."""
    return str(Path(resume).resolve()) if resume else fresh


def _config_subdir(resume: str | None) -> str | None:
    """Where Hydra saves its view of the config: nowhere when resuming (keep the original)."""
    return None if resume else ".hydra"


def register_resolvers() -> None:
    resolvers = {
        "mul": lambda a, b: float(a) * float(b),
        "stagetune.run_dir": _run_dir,
        "stagetune.config_subdir": _config_subdir,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def build_trainer(cfg: DictConfig, plan: Plan, run: RunDir, callbacks: list[pl.Callback]) -> pl.Trainer:
    trainer_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer).items() if v is not None}
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints,
        filename="best-epoch{epoch}-step{step}",
        auto_insert_metric_name=False,
        monitor=cfg.metric,
        mode=cfg.metric_mode,
        save_top_k=1,
        save_last=True,
    )
    logger = (
        TensorBoardLogger(save_dir=str(run.path), name="tensorboard", version="", default_hp_metric=False)
        if cfg.logger.tensorboard
        else False
    )
    if trainer_kwargs.get("enable_progress_bar", True):
        callbacks = [*callbacks, StageProgressBar()]
    return pl.Trainer(
        max_epochs=plan.total_epochs,
        callbacks=[StagePlan(plan), *callbacks, checkpoint],
        logger=logger,
        default_root_dir=str(run.path),
        enable_model_summary=False,
        **trainer_kwargs,
    )


def build(node: DictConfig, **kwargs):
    """``instantiate``, letting a StagetuneError raised by the target through as itself.

    Hydra wraps every exception from a ``_target_`` in an InstantiationException; a user error
    (bad data, missing weights) must still reach the CLI as its own one-line message.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, StagetuneError):
            raise cause from None
        raise


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def train(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None) -> float:
    """One run, start to finish; returns the configured metric (best value over validation)."""
    started = time.time()
    cfg = validate(cfg)
    run = RunDir(run_dir)
    ckpt_path = cfg.ckpt_path
    if cfg.resume:
        resumed = RunDir(cfg.resume)
        ckpt_path = str(resumed.checkpoint("last"))
        cfg = validate(resumed.config())
        log.info("resuming %s from %s", run.path, ckpt_path)
    else:
        run.save_config(cfg, overrides or [])
    run.save_run_info(PACKAGE_DIR)
    run.update_metrics(status="running", experiment=cfg.experiment, metric={"name": cfg.metric})

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build(cfg.data)
    model = build(cfg.model, **datamodule.model_kwargs())
    plan = Plan.from_config(cfg.plan, cfg.optim, len(model.layer_groups()))
    trainer = build_trainer(cfg, plan, run, callbacks=[])
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    stage_plan = next(c for c in trainer.callbacks if isinstance(c, StagePlan))
    stages = list(stage_plan.history)  # before testing: loading the best checkpoint restores its history
    checkpoint = trainer.checkpoint_callback
    final = _scalars(trainer.callback_metrics)
    best = checkpoint.best_model_score
    value = float(best) if best is not None else final.get(cfg.metric, math.nan)
    test = {}
    if cfg.test and getattr(datamodule, "has_test", False):
        results = trainer.test(model, datamodule=datamodule, ckpt_path="best" if best is not None else None)
        test = _scalars(results[0]) if results else {}
    record = run.update_metrics(
        status="completed",
        metric={"name": cfg.metric, "mode": cfg.metric_mode, "best": value, "last": final.get(cfg.metric)},
        final=final,
        best={"value": value, "checkpoint": checkpoint.best_model_path or None},
        test=test,
        stages=stages,
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        time_s=round(time.time() - started, 2),
        **_extra_metrics(datamodule),
    )
    if trainer.is_global_zero:
        _print_summary(cfg, run, record)
    return value


def _extra_metrics(datamodule) -> dict:
    """Facts the data knows about itself (a synthetic set's noise floor) to keep beside the metrics."""
    extra = getattr(datamodule, "summary", None)
    return {"data": extra()} if callable(extra) else {}


def _print_summary(cfg: DictConfig, run: RunDir, record: dict) -> None:
    metric = record["metric"]
    lines = [f"{metric['name']} best {metric['best']:.4f}"]
    for key, value in record.get("test", {}).items():
        lines.append(f"{key} {value:.4f}")
    for key, value in record.get("data", {}).items():
        lines.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    print("\n".join(lines), file=sys.stderr)
    print(f"run directory: {run.path}", file=sys.stderr)
    print(f"tensorboard:   tensorboard --logdir {run.tensorboard}", file=sys.stderr)


class _Progress:
    """Whether Hydra got as far as calling the task (else a failure is a composition error)."""

    task_started = False


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    _Progress.task_started = True
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        return train(cfg, run_dir, list(hydra_cfg.overrides.task))
    except StagetuneError as err:
        kind = "config error" if err.exit_code == 2 else "error"
        print(f"stagetune: {kind}: {err}", file=sys.stderr)
        RunDir(run_dir).update_metrics(status="failed", error=str(err))
        if multirun:
            return math.nan
        sys.exit(err.exit_code)


def main() -> None:
    """Console entry point; Hydra's own composition errors (bad key, unknown group) exit with 2."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    try:
        hydra_main()
    except SystemExit as exit_:
        if exit_.code == 1 and not _Progress.task_started:
            raise SystemExit(2) from None
        raise
