"""The ``stagetune`` command: compose the config, validate it, build the run, fit, test, record.

Read top to bottom, :func:`train` is a whole run: the data and model are built from config
(``_target_``), the plan is checked against the model's layer groups, the Trainer gets the
StagePlan callback, and the run directory receives the config, checkpoints, TensorBoard events
and ``metrics.json``. The return value is the configured metric, so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import difflib
import logging
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger

from stagetune.engine import launch
from stagetune.app import PACKAGE_DIR, check_output_overrides, conf_dir
from stagetune.build import build
from stagetune.commands.cli import hydra_command, hydra_task, in_multirun, print_config_tree, report_error, unforeseen
from stagetune.config import check_paths, optim_of, plan_of, validate
from stagetune.engine.cache import FeatureCache
from stagetune.engine.faults import Interrupted, check_checkpoint
from stagetune.engine.lr_find import StageFinder
from stagetune.engine.plan import Plan, StagePlan
from stagetune.engine.reproducibility import ExactResume
from stagetune.engine.trainer import build_trainer
from stagetune.errors import ConfigError, DataError, StagetuneError
from stagetune.runs.hparams import HParamsSummary, ScalarLayout
from stagetune.runs.rundir import HISTORY, RunDir, check_resume_overrides
from stagetune.runs.swept import swept_keys
from stagetune.runs.trained import without_start_weights

log = logging.getLogger("stagetune")


def run_checkpoint(cfg: DictConfig, run: RunDir) -> ModelCheckpoint:
    """The best checkpoints by the run's metric (``checkpoint.*``), in ``checkpoints/``; ``last.ckpt`` beside them is the engine's (LatestCheckpoint)."""
    return ModelCheckpoint(
        dirpath=run.checkpoints,
        filename="best-epoch{epoch}-step{step}",
        auto_insert_metric_name=False,
        monitor=cfg.metric,
        mode=cfg.metric_mode,
        save_top_k=cfg.checkpoint.save_top_k,
        every_n_epochs=cfg.checkpoint.every_n_epochs,
    )


class MetricCheck(pl.Callback):
    """A validation ``metric`` (``val/...``) must be one the model logs; a typo would stop the run only
    when the first checkpoint is chosen. Checked after Lightning's sanity check, before any training
    (at the first validation when ``trainer.num_sanity_val_steps=0``); other metrics (a training
    loss, logged at the epoch's end) are left to the checkpoint's own check."""

    def __init__(self, metric: str) -> None:
        self.metric, self.checked = metric, not metric.startswith("val/")

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if self.checked:
            return
        self.checked = True
        logged = sorted(k for k in trainer.callback_metrics if k not in ("epoch", "step"))
        if self.metric not in logged:
            close = difflib.get_close_matches(self.metric, logged, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError("metric", self.metric, f"{hint}the model logs: {', '.join(logged) or 'nothing'}")


def run_logger(cfg: DictConfig, run: RunDir) -> list[Logger] | bool:
    """Lightning's loggers chosen by ``logger=``, each writing under the run directory."""
    loggers: list[Logger] = []
    if cfg.logger.tensorboard:
        tensorboard = run.tensorboard  # a sweep job's is named by what the sweep changed
        loggers.append(TensorBoardLogger(save_dir=str(tensorboard.parent), name=tensorboard.name, version="", default_hp_metric=False))
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run.path), name="csv", version=""))
    if cfg.logger.mlflow:
        loggers.append(mlflow_logger(cfg, run))
    return loggers or False


def mlflow_logger(cfg: DictConfig, run: RunDir) -> Logger:
    """An MLflow logger with a local file store in the run's ``mlruns/``; needs the ``mlflow`` extra."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("logger.mlflow", True, "needs mlflow: pip install 'stagetune[mlflow]'") from None
    return MLFlowLogger(experiment_name=cfg.experiment, tracking_uri=(run.path / "mlruns").resolve().as_uri())


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def named_callback(name: str, node: DictConfig) -> pl.Callback:
    """``callbacks.NAME``, built; a callback whose optional package is missing is one config-error line."""
    try:
        return build(node)
    except InstantiationException as err:
        cause = err.__cause__
        if not isinstance(cause, ModuleNotFoundError):
            raise
        line = str(cause).splitlines()[0]
        why = "needs rich: pip install 'stagetune[rich]'" if "rich" in line else line
        raise ConfigError(f"callbacks.{name}", node.get("_target_"), why) from None


def run_callbacks(cfg: DictConfig, overrides: list[str], swept: list[str] | None = None) -> list[pl.Callback]:
    """The callbacks a run adds to every stagetune Trainer's own, then those named under ``callbacks:``."""
    named = [named_callback(name, node) for name, node in (cfg.callbacks or {}).items() if node is not None]
    return [ExactResume(), FeatureCache(cfg.plan.cache), HParamsSummary(cfg, overrides, swept), ScalarLayout(cfg.metric), MetricCheck(cfg.metric), *named]


def run_finder(cfg: DictConfig, run: RunDir) -> StageFinder | None:
    """The range test of the run's ``lr=find`` stages (None when every stage has a number)."""
    plan = plan_of(cfg)
    if not any(stage.finds_lr for stage in plan.ordered):
        return None
    model_cfg = without_start_weights(cfg).model  # the live model's weights replace the copy's
    return StageFinder(
        settings=plan.find,
        make_model=lambda datamodule: build(model_cfg, **datamodule.model_kwargs()),
        optim=optim_of(cfg),
        trainer_args=cfg.trainer,
        out_dir=run.path,
        tensorboard=run.tensorboard,
    )


def run_trainer(cfg: DictConfig, run: RunDir) -> pl.Trainer:
    """The Trainer of a run: the engine's, with the run's checkpoints, logger and callbacks."""
    return build_trainer(
        plan_of(cfg),
        optim_of(cfg),
        cfg.trainer,
        callbacks=run_callbacks(cfg, run.overrides(), run.swept()),
        checkpoint=run_checkpoint(cfg, run),
        logger=run_logger(cfg, run),
        root_dir=str(run.path),
        history_csv=run.path / HISTORY,
        finder=run_finder(cfg, run),
    )


def train(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None, swept: list[str] | None = None) -> float:
    """One run, start to finish; returns the configured metric (best value over validation).

    ``swept`` names the keys the sweep this run belongs to turns (:mod:`stagetune.runs.swept`).

    Rank 0 is the run directory's one writer (:meth:`RunDir.claim`); a resume appends to the
    records and takes nothing from the command line; a completed run is left as it is.
    """
    run = RunDir(run_dir)
    writer = launch.global_rank() == 0
    resuming = bool(cfg.resume)  # the run's own config, read below, says resume: null
    if writer and not resuming:
        run.claim_fresh()
    cfg = validate(cfg)
    if cfg.print_config and writer:
        print_config_tree(cfg)
    ckpt_path = cfg.ckpt_path
    if resuming:
        check_resume_overrides(cfg.resume, overrides or [])
        resumed = RunDir(cfg.resume)
        cfg = validate(resumed.checked_config())
        done = run.claim_resume() if writer else run.completed()
        if done is not None:
            print(f"stagetune: {run.path} already completed; nothing to resume, nothing changed", file=sys.stderr)
            return done.get("metric", {}).get("best", math.nan)
        ckpt_path = resume_checkpoint(resumed)
        log.info("resuming %s from %s", run.path, ckpt_path)
    what = "resume" if resuming else "ckpt_path"
    from_step = check_training_checkpoint(ckpt_path, what, plan_of(cfg)) if ckpt_path else None
    launch.process_count(cfg.trainer)
    if writer and resuming:
        run.record_resume(PACKAGE_DIR, from_step)
    elif writer:
        run.save_config(cfg, overrides or [])
        run.save_run_info(PACKAGE_DIR, swept)
        run.update_metrics(status="running", experiment=cfg.experiment, metric={"name": cfg.metric}, **debug_record(cfg))
    with launch.ranks(cfg.trainer, run.path, ckpt_path, run.worker_env()):
        value = fit_run(without_start_weights(cfg) if ckpt_path else cfg, run, ckpt_path)
    run.release()
    return value


def debug_record(cfg: DictConfig) -> dict:
    """``{"debug": NAME}`` for a ``debug=NAME`` run: reports and sweepers read it as a check, not a result."""
    return {"debug": cfg.debug} if cfg.debug else {}


def resume_checkpoint(resumed: RunDir) -> str:
    """``last.ckpt`` of a run to continue; a run that stopped before saving one cannot be continued."""
    try:
        return str(resumed.checkpoint("last"))
    except FileNotFoundError:
        status = resumed.metrics().get("status", "unknown")
        raise StagetuneError(
            f"resume: {resumed.path} has no checkpoint yet (status: {status}; it stopped before the end of its first "
            "epoch): nothing to continue, start the run again in a new directory"
        ) from None


def check_training_checkpoint(path: str, what: str, plan: Plan) -> int | None:
    """A checkpoint to continue from must be readable, hold stagetune's training state and have been made
    by this plan (the same stages, the same epochs in those it entered: its schedule is sized to them); its step."""
    data = check_checkpoint(path, what)
    if "state_dict" not in data or "StagePlan" not in data.get("callbacks", {}):
        raise StagetuneError(f"{what}: {path} is not a stagetune training checkpoint (no stage plan state in it)")
    state = data["callbacks"]["StagePlan"]
    names = [stage.name for stage in plan.ordered]
    if state.get("stages") != names:
        raise ConfigError(what, path, f"made with the stages {state.get('stages')}; this plan has {names}: continue it with the plan it was made with")
    for row in state.get("history", []):
        epochs = plan.stages[row["stage"]].epochs
        if row.get("epochs") != epochs:
            raise ConfigError(
                what,
                path,
                f"made with plan.stages.{row['stage']}.epochs={row.get('epochs')}; this plan has {epochs}: a checkpoint "
                "continues the plan it was made with (its LR schedule is sized to it)",
            )
    return data.get("global_step")


def check_splits(cfg: DictConfig, datamodule, world_size: int) -> None:
    """Splits a run can use: a batch no larger than the training split (else one short batch per
    epoch), a validation split that is not empty (it chooses the checkpoint), and under DDP at
    least one validation and test example per process (a process with none would wait forever)."""
    batch_size = cfg.data.get("batch_size")
    n = len(datamodule.train_dataloader().dataset)
    if batch_size is not None and batch_size > n:
        raise ConfigError("data.batch_size", batch_size, f"the training split has {n} examples; use at most {n}")
    parts = {"validation": datamodule.val_dataloader().dataset}
    if cfg.test and getattr(datamodule, "has_test", False):
        parts["test"] = datamodule.test_dataloader().dataset
    for part, dataset in parts.items():
        size = len(dataset)
        if size == 0:
            keys = ("valid_pct", "val_pct", "n_val") if part == "validation" else ("test_pct",)
            key = next((key for key in keys if key in cfg.data), None)
            if key is None:
                raise DataError(f"the {part} split is empty; it is what measures the run")
            raise ConfigError(f"data.{key}", cfg.data[key], f"the {part} split is empty; make it large enough to hold examples")
        if size < world_size:
            raise ConfigError(
                "trainer.devices", cfg.trainer.get("devices"),
                f"the {part} split has {size} example(s) for {world_size} processes; every process needs one: "
                f"use at most {size} devices, or a larger split",
            )


def fit_run(cfg: DictConfig, run: RunDir, ckpt_path: str | None) -> float:
    """Build data, model, plan and Trainer; fit, evaluate the chosen checkpoint, and (on rank 0) record ``metrics.json``."""
    started = time.time()
    with sigterm_as_interruption():
        trainer = run_trainer(cfg, run)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = build(cfg.data)
        model = build(cfg.model, **datamodule.model_kwargs())
        check_splits(cfg, datamodule, trainer.world_size)
        groups = model.layer_groups()
        plan_of(cfg).check_groups(len(groups), names=[g.name for g in groups])
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        if trainer.interrupted:  # Lightning turns a Ctrl-C before training starts into exit(1)
            raise KeyboardInterrupt from None
        raise

    stages = list(StagePlan.of(trainer).history)  # before evaluating: loading the best checkpoint restores its history
    checkpoint = trainer.checkpoint_callback
    # a resume of a run stopped during its final evaluation trains nothing: the record keeps the fit's last values
    final = _scalars(trainer.callback_metrics) or run.metrics().get("final", {})
    if trainer.is_global_zero:
        run.update_metrics(final=final)
    best = checkpoint.best_model_score
    value = float(best) if best is not None else final.get(cfg.metric, math.nan)
    valid, fit, test = evaluate_chosen(trainer, model, datamodule, "best" if best is not None else None, bool(cfg.test))
    if not trainer.is_global_zero:
        return value
    record = run.update_metrics(
        status="completed",
        metric={"name": cfg.metric, "mode": cfg.metric_mode, "best": value, "last": final.get(cfg.metric)},
        final=final,
        best={"value": value, "checkpoint": checkpoint.best_model_path or None},
        valid=valid,
        test=test,
        stages=stages,
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        world_size=trainer.world_size,
        time_s=round(time.time() - started, 2),
        **({"train_eval": fit} if fit else {}),
        **_extra_metrics(datamodule),
    )
    _print_summary(cfg, run, record)
    return math.nan if cfg.debug else value  # a sweeper never optimises a debug run's number


def evaluate_chosen(trainer: pl.Trainer, model, datamodule, ckpt_path: str | None, with_test: bool) -> tuple[dict, dict, dict]:
    """Valid, train and test metrics of the chosen checkpoint, side by side.

    Train (``train_eval/*``) is the training part re-read in eval mode, where the data offers it
    (``train_eval_dataloader``): how well the model fits what it learned from, to set beside valid.
    This is the only place test data is read: after fitting, once, with the checkpoint that valid
    chose; nothing that selects (the checkpoint, a sweep's objective) sees its result.
    """
    kwargs = {"ckpt_path": ckpt_path, "weights_only": True, "verbose": False}
    train_part = getattr(datamodule, "train_eval_dataloader", None)
    if train_part is None:
        valid = trainer.validate(model, datamodule=datamodule, **kwargs)
    else:
        valid = trainer.validate(model, dataloaders=[datamodule.val_dataloader(), train_part()], **kwargs)
    test = trainer.test(model, datamodule=datamodule, **kwargs) if with_test and getattr(datamodule, "has_test", False) else []
    fit = _scalars(valid[1]) if len(valid) > 1 else {}
    valid, test = (_scalars(r[0]) if r else {} for r in (valid, test))
    return valid, fit, test


def _extra_metrics(datamodule) -> dict:
    """Facts the data knows about itself (a synthetic set's noise floor) to keep beside the metrics."""
    extra = getattr(datamodule, "summary", None)
    return {"data": extra()} if callable(extra) else {}


def _print_summary(cfg: DictConfig, run: RunDir, record: dict) -> None:
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
    if cfg.debug:
        lines.append(f"debug={cfg.debug}: a check, not a result (kept apart in outputs/debug/)")
    print("\n".join(lines), file=sys.stderr)
    print(f"run directory: {run.path}", file=sys.stderr)
    print(f"tensorboard:   tensorboard --logdir {run.tensorboard}", file=sys.stderr)


def record_failure(status: str, message: str) -> bool:
    """A failed job's status and error, in its run directory (rank 0 writes it); whether they were written."""
    return launch.global_rank() == 0 and RunDir(HydraConfig.get().runtime.output_dir).record_failure(status, message)


SETUP_INTERRUPTED = "{} received during set-up, before training started; nothing was trained or saved: start the run again"


def sigterm_in_setup(signum: int, frame) -> None:
    """SIGTERM before the Trainer takes the signals over (building data, model, callbacks): stop as Ctrl-C does."""
    raise Interrupted(SETUP_INTERRUPTED.format("SIGTERM"), signal.SIGTERM)


@contextmanager
def sigterm_as_interruption() -> Iterator[None]:
    """While a run builds its Trainer, data and model (a source model may train here), SIGTERM stops it
    as Ctrl-C does, in one ``interrupted`` line; from ``fit`` on, the Trainer and
    :class:`~stagetune.engine.faults.Interruption` own the signals."""
    previous = signal.signal(signal.SIGTERM, sigterm_in_setup)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_job(cfg: DictConfig, run_dir: str | Path, overrides: list[str], swept: list[str] | None = None) -> float:
    """:func:`train`, with every failure a :class:`StagetuneError` saying what to do next.

    SIGINT (and, by :func:`sigterm_as_interruption`, SIGTERM) during set-up ends the run as
    ``interrupted`` in one line. In a sweep, a failure no check foresaw is logged and recorded, and
    the job returns NaN so the other jobs still run.
    """
    try:
        return train(cfg, run_dir, overrides, swept)
    except StagetuneError:
        raise
    except KeyboardInterrupt:
        raise Interrupted(SETUP_INTERRUPTED.format("SIGINT"), signal.SIGINT) from None
    except Exception as err:
        if not in_multirun():
            raise unforeseen(err, Path(run_dir).resolve()) from err
        log.exception("job %s failed", HydraConfig.get().job.num)
        record_failure("failed", f"{type(err).__name__}: {err}")
        return math.nan


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
@hydra_task("stagetune", record=record_failure)
def hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    swept = swept_keys(sys.argv[1:], hydra_cfg.sweeper.get("params")) if in_multirun() else []
    return run_job(cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task), swept)


def main() -> None:
    """Console entry point: ``stagetune [key=value ...]``."""
    sys.argv = [sys.argv[0], *launch.hydra_args_for_rank(sys.argv[1:])]
    try:
        check_paths(*(override_of(sys.argv[1:], key) for key in ("resume", "ckpt_path")))
    except StagetuneError as err:  # before Hydra makes the run directory, which is the resumed one
        sys.exit(report_error("stagetune", err))
    check_output_overrides(sys.argv[1:])
    hydra_command("stagetune", hydra_main)


def override_of(argv: list[str], key: str) -> str | None:
    """The value ``key=VALUE`` on the command line gives (``null`` and interpolations left to the config)."""
    for arg in argv:
        name, _, value = arg.partition("=")
        if name.lstrip("+") == key and value not in ("", "null") and "${" not in value:
            return value.strip("'\"")
    return None
