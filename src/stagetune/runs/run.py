"""The run: validate, claim or resume its directory, build, fit, evaluate the chosen checkpoint, record.

Read top to bottom, :func:`train` is a whole run: the data and model are built from config
(``_target_``), the plan is checked against the model's layer groups, the Trainer gets the
StagePlan callback, and the run directory receives the config, checkpoints, TensorBoard events
and ``metrics.json``. It returns what happened (:class:`Outcome`): the configured metric, for
sweepers to optimise, and the record, for the command to print.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Timer

from stagetune.app import PACKAGE_DIR
from stagetune.build import build
from stagetune.config import plan_of, validate
from stagetune.console import print_config_tree
from stagetune.engine import launch
from stagetune.engine.plan import StagePlan
from stagetune.errors import Interrupted, StagetuneError
from stagetune.runs.assemble import run_trainer
from stagetune.runs.checks import check_splits, check_training_checkpoint, unmeasured_metric
from stagetune.runs.mlflow_run import record_in_mlflow
from stagetune.runs.refit import check_refit, chosen_epochs, refit_and_test
from stagetune.runs.rundir import RunDir, check_resume_overrides
from stagetune.runs.trained import without_start_weights

log = logging.getLogger("stagetune")


@dataclass(frozen=True)
class Outcome:
    """What a run did. ``value`` is the configured metric (best over validation; NaN for a debug
    run), what a sweeper optimises; ``record`` is ``metrics.json`` as this process left it (None on
    a rank other than 0, and for a completed run asked to resume: it is left as it was)."""

    value: float
    run: RunDir
    record: dict | None
    already_completed: bool = False


def train(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None, swept: list[str] | None = None) -> Outcome:
    """One run, start to finish; returns what happened, for the command to say.

    ``swept`` names the keys the sweep this run belongs to turns (:mod:`stagetune.runs.swept`).

    Rank 0 is the run directory's one writer (:meth:`RunDir.claim`); a resume appends to the
    records and takes nothing from the command line; a completed run is left as it is.
    """
    run = RunDir(run_dir)
    writer = launch.global_rank() == 0
    resuming = bool(cfg.resume)  # the run's own config, read below, says resume: null
    if resuming:  # before the config is validated: an override it does not know is refused as any other
        check_resume_overrides(cfg.resume, overrides or [])
    if writer and not resuming:
        run.claim_fresh()
    cfg = validate(cfg)
    if cfg.print_config and writer:
        print_config_tree(cfg)
    ckpt_path = cfg.ckpt_path
    if resuming:
        resumed = RunDir(cfg.resume)
        cfg = validate(resumed.checked_config())
        done = run.claim_resume() if writer else run.completed()
        if done is not None:
            return Outcome(done.get("metric", {}).get("best", math.nan), run, None, already_completed=True)
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
        outcome = fit_run(without_start_weights(cfg) if ckpt_path else cfg, run, ckpt_path, resuming)
    run.release()
    return outcome


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


def fit_run(cfg: DictConfig, run: RunDir, ckpt_path: str | None, resuming: bool = False) -> Outcome:
    """Build data, model, plan and Trainer; fit, evaluate the chosen checkpoint, and (on rank 0) record ``metrics.json``."""
    with BetweenPhases(run, resumable=resuming).installed() as phases:
        return fit_and_record(cfg, run, ckpt_path, phases)


def fit_and_record(cfg: DictConfig, run: RunDir, ckpt_path: str | None, phases: BetweenPhases) -> Outcome:
    """:func:`fit_run`'s body, telling ``phases`` when the training is over."""
    started, cpu_started = time.time(), time.process_time()
    trainer = run_trainer(cfg, run)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build(cfg.data)
    model = build(cfg.model, **datamodule.model_kwargs())
    check_splits(cfg, datamodule, trainer.world_size)
    if cfg.refit:
        check_refit(datamodule, trainer.world_size)
    groups = model.layer_groups()
    plan_of(cfg).check_groups(len(groups), names=[g.name for g in groups])
    if (warning := unmeasured_metric(cfg)) and trainer.is_global_zero:
        log.warning(warning)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        if trainer.interrupted:  # Lightning turns a Ctrl-C before training starts into exit(1)
            raise KeyboardInterrupt from None
        raise
    phases.fitted()

    stages = list(StagePlan.of(trainer).history)  # before evaluating: loading the best checkpoint restores its history
    checkpoint = trainer.checkpoint_callback
    # a resume of a run stopped during its final evaluation trains nothing: the record keeps the fit's last values
    final = _scalars(trainer.callback_metrics) or run.metrics().get("final", {})
    if trainer.is_global_zero:
        run.update_metrics(final=final)
    best = checkpoint.best_model_score
    value = float(best) if best is not None else final.get(cfg.metric, math.nan)
    valid, fit, test = evaluate_chosen(trainer, model, datamodule, "best" if best is not None else None, bool(cfg.test) and not cfg.refit)
    if not trainer.is_global_zero:
        return Outcome(value, run, None)
    refit = {}
    if cfg.refit:  # valid has chosen; test is read once, by the refit model
        refit = refit_and_test(cfg, run, chosen_epochs(checkpoint.best_model_path, trainer.current_epoch))
        test = refit["test"]
    record = run.update_metrics(
        status="completed",
        metric={"name": cfg.metric, "mode": cfg.metric_mode, "best": value, "last": final.get(cfg.metric)},
        final=final,
        best={"value": value, "checkpoint": run.relative(checkpoint.best_model_path) if checkpoint.best_model_path else None},
        valid=valid,
        test=test,
        stages=stages,
        epochs=trainer.current_epoch,
        **({"stopped": stop} if (stop := stopped_by(trainer, plan_of(cfg).total_epochs)) else {}),
        global_step=trainer.global_step,
        world_size=trainer.world_size,
        time_s=round(time.time() - started, 2),
        cpu_s=round(time.process_time() - cpu_started, 2),
        **({"train_eval": fit} if fit else {}),
        **({"refit": refit} if refit else {}),
        **_extra_metrics(datamodule),
    )
    record_in_mlflow(trainer)
    return Outcome(math.nan if cfg.debug else value, run, record)  # a sweeper never optimises a debug run's number


def stopped_by(trainer: pl.Trainer, epochs: int) -> dict | None:
    """What ended the fit before the plan's last epoch (EarlyStopping, ``trainer.max_time``), and when: a run
    that completed early says so. None when the plan ran to its end."""
    if trainer.current_epoch >= epochs:
        return None
    early = trainer.early_stopping_callback
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if early is not None and early.stopped_epoch:
        by = f"early stopping: {early.monitor} did not improve by more than {abs(early.min_delta):g} for {early.patience} validations"
    elif timer is not None and (timer.time_remaining() or 0) <= 0:
        by = "trainer.max_time ran out"
    else:
        return None
    return {"by": by, "epoch": trainer.current_epoch, "of": epochs}


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


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


SETUP_INTERRUPTED = "{} received during set-up, before training started; nothing was trained or saved: start the run again"
BEFORE_RESUMING = "{} received during set-up, before training went on; nothing new was trained. Continue with: stagetune resume={}"
BEFORE_EVALUATION = (
    "{} received after training finished, before the evaluation of the chosen checkpoint; the training is saved. Continue with: stagetune resume={}"
)


class BetweenPhases:
    """SIGTERM outside Lightning's loops (building data and model, a resume's checkpoint load before
    Lightning installs its handlers, between the fit and the evaluation): stop as Ctrl-C does, in
    one ``interrupted`` line that says what is saved. Inside the loops the Trainer and
    :class:`~stagetune.engine.faults.Interruption` own the signals."""

    def __init__(self, run: RunDir, resumable: bool) -> None:
        self.run, self.message = run, BEFORE_RESUMING if resumable else SETUP_INTERRUPTED

    def fitted(self) -> None:
        """Training is over and saved in ``last.ckpt``: a signal now leaves a run that resume evaluates."""
        self.message = BEFORE_EVALUATION

    def _raise(self, signum: int, frame) -> None:
        raise Interrupted(self.message.format(signal.Signals(signum).name, self.run.path), signum)

    @contextmanager
    def installed(self) -> Iterator[BetweenPhases]:
        previous = signal.signal(signal.SIGTERM, self._raise)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
