"""One worker of a shared Optuna study: ask a trial, launch its job, tell the outcome, repeat.

Every ``stagetune -m sweep=optuna`` process is one worker. It keeps asking until the study holds
``n_trials`` trials that did not fail, counted in the storage across all workers (see
:mod:`stagetune.sweeps.study`), starting the next trial as soon as its last one ends; nothing waits
for a batch. When the study is full but trials of other workers still run, it waits for them, so
that it can take over the trial of a worker that dies. With a launcher that runs jobs elsewhere
(submitit on SLURM) one worker keeps ``n_jobs`` trials in flight, each in its own thread.

A trial's job gets the drawn values as overrides, plus the :class:`~stagetune.sweeps.pruning.TrialPruning`
callback under ``callbacks.optuna_trial``; its directory is the sweep directory's
``<trial number>/``. The job's ``metrics.json`` decides the state told to the study: ``completed``
with a finite metric is COMPLETE, ``pruned`` is PRUNED, anything else is FAIL (an ``interrupted``
job also stops its worker and queues its parameters again).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from stagetune.atomic import write_atomic
from stagetune.errors import ConfigError
from stagetune.runs.rundir import RunDir
from stagetune.runs.sweep_report import TRIAL_CALLBACK
from stagetune.sweeps.report import STUDY_FILE
from stagetune.sweeps.sampler import TrialSeeded
from stagetune.sweeps.settings import SweeperSettings
from stagetune.sweeps.space import SearchSpace, render
from stagetune.sweeps.study import (
    RETRY_OF,
    SURPLUS,
    Heartbeat,
    fail_stale_trials,
    is_surplus,
    open_storage,
    progress,
)

log = logging.getLogger("stagetune")

POLL_S = 2.0  # how often a worker with nothing to ask looks at the study again
RESULTS_FILE = "optimization_results.yaml"


def sampler_maker(node: DictConfig, space: SearchSpace) -> tuple[Callable[[int | None], optuna.samplers.BaseSampler], int | None]:
    """(build a sampler for a seed, the configured seed) from ``hydra.sweeper.sampler``."""
    spec = OmegaConf.to_container(node, resolve=True)
    seed = spec.pop("seed", None)
    target = str(spec.get("_target_", ""))
    extra = {"search_space": space.grid()} if target.endswith("GridSampler") else {}
    return (lambda s: instantiate({**spec, **extra, "seed": s})), seed


def pruner_spec(node: DictConfig | None) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {"_target_": "optuna.pruners.NopPruner"}


def callback_overrides(settings: SweeperSettings, number: int, monitor: str, pruner: dict[str, Any]) -> list[str]:
    """The overrides that put :class:`TrialPruning` for trial ``number`` into the job's config."""
    node = {
        "_target_": "stagetune.sweeps.pruning.TrialPruning",
        "study_name": settings.study_name,
        "storage": settings.storage,
        "number": number,
        "monitor": monitor,
    }
    out = [f"+{TRIAL_CALLBACK}.{key}={render(value)}" for key, value in node.items()]
    return out + [f"+{TRIAL_CALLBACK}.pruner.{key}={render(value)}" for key, value in pruner.items()]


@dataclass
class Outcome:
    """What a finished job tells the study."""

    state: TrialState
    value: float | None
    status: str
    run_dir: Path | None
    record: dict

    @classmethod
    def of(cls, ret: JobReturn) -> "Outcome":
        run_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir)) if ret.hydra_cfg is not None else None
        record = RunDir(run_dir).metrics() if run_dir is not None else {}
        status = record.get("status", "failed")
        value = ret.return_value if ret.status == JobStatus.COMPLETED else None
        if status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            return cls(TrialState.COMPLETE, float(value), status, run_dir, record)
        if status == "pruned":
            return cls(TrialState.PRUNED, None, status, run_dir, record)
        if status == "completed":
            status = f"debug={record['debug']}" if record.get("debug") else "failed"  # a debug run is no result
        return cls(TrialState.FAIL, None, status, run_dir, record)

    def user_attrs(self) -> dict[str, Any]:
        """The run's own record, kept on the trial: the report needs no run directory to show it."""
        attrs: dict[str, Any] = {"status": self.status, "run_dir": str(self.run_dir) if self.run_dir else None}
        metric = self.record.get("metric", {})
        if isinstance(metric.get("best"), (int, float)):
            attrs["valid"] = {metric["name"]: metric["best"]}
        if self.record.get("test"):
            attrs["test"] = self.record["test"]
        for key in ("epochs", "time_s"):
            if key in self.record:
                attrs[key] = self.record[key]
        if self.record.get("error"):
            attrs["error"] = str(self.record["error"])[:500]
        return attrs


class StudyWorker:
    """The loop of one worker (one thread per ``n_jobs`` lane) over a shared study."""

    def __init__(
        self,
        settings: SweeperSettings,
        space: SearchSpace,
        sampler: tuple[Callable[[int | None], optuna.samplers.BaseSampler], int | None],
        pruner: dict[str, Any],
        launcher: Launcher,
        monitor: str,
        sweep_dir: Path,
    ) -> None:
        self.settings, self.space, self.pruner, self.launcher = settings, space, pruner, launcher
        self.make_sampler, self.seed = sampler
        self.monitor, self.sweep_dir = monitor, sweep_dir
        self.stop = threading.Event()
        self.ran: list[int] = []

    def study(self) -> optuna.Study:
        """A study object of this worker's own (one per lane: each holds the sampler of its current trial)."""
        study = optuna.create_study(
            study_name=self.settings.study_name,
            storage=open_storage(self.settings.storage),
            sampler=TrialSeeded(self.make_sampler, self.seed),
            pruner=instantiate(self.pruner),
            direction=self.settings.direction,
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.settings.direction:
            raise ConfigError(
                "hydra.sweeper.direction", self.settings.direction, f"study {study.study_name!r} already exists and is to {study.direction.name.lower()}"
            )
        return study

    def run(self) -> optuna.Study:
        study = self.study()
        for params in self.settings.enqueue:
            study.enqueue_trial(dict(params), skip_if_exists=True)
        write_atomic(
            self.sweep_dir / STUDY_FILE,
            OmegaConf.to_yaml({"study_name": self.settings.study_name, "storage": self.settings.storage}),
        )
        if self.settings.n_jobs == 1:
            self.lane(study)
        else:
            lanes = [threading.Thread(target=self.lane, args=(self.study(),), name=f"lane-{k}") for k in range(self.settings.n_jobs)]
            for lane in lanes:
                lane.start()
            for lane in lanes:
                lane.join()
        return study

    def lane(self, study: optuna.Study) -> None:
        s = self.settings
        while not self.stop.is_set():
            fail_stale_trials(study, s.grace_period)
            now = progress(study)
            if now.failed >= s.max_failures > 0:
                log.error("study %s has %d failed trials (hydra.sweeper.max_failures=%d): this worker stops", s.study_name, now.failed, s.max_failures)
                self.stop.set()
                return
            if now.waiting == 0 and now.taken >= s.n_trials:
                if now.running == 0:
                    return
                self.stop.wait(min(s.heartbeat_interval, POLL_S))  # the study is full: watch the others' trials
                continue
            self.run_trial(study, study.ask())

    def run_trial(self, study: optuna.Study, trial: optuna.Trial) -> None:
        if is_surplus(study, trial.number, self.settings.n_trials):
            trial.set_user_attr(SURPLUS, True)
            study.tell(trial, state=TrialState.FAIL)
            return
        with Heartbeat(trial, self.settings.heartbeat_interval):
            values = self.space.suggest(trial)
            overrides = self.space.overrides(values) + callback_overrides(self.settings, trial.number, self.monitor, self.pruner)
            log.info("trial %d: %s", trial.number, " ".join(f"{k}={render(v)}" for k, v in values.items()))
            try:
                outcome = Outcome.of(self.launcher.launch([overrides], initial_job_idx=trial.number)[0])
            except KeyboardInterrupt:
                self.tell(study, trial, Outcome(TrialState.FAIL, None, "interrupted", None, {}))
                raise
            except Exception as err:  # the launcher itself failed (a cluster job lost): this trial only
                log.exception("trial %d: the launcher failed", trial.number)
                outcome = Outcome(TrialState.FAIL, None, "failed", None, {"error": f"{type(err).__name__}: {err}"})
            for key, value in outcome.user_attrs().items():
                trial.set_user_attr(key, value)
        self.tell(study, trial, outcome)

    def tell(self, study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
        try:
            study.tell(trial, outcome.value, state=outcome.state)
        except UpdateFinishedTrialError:
            log.warning("trial %d had already been marked failed by another worker; its run is in %s", trial.number, outcome.run_dir)
            return
        self.ran.append(trial.number)
        log.info("trial %d %s%s", trial.number, outcome.state.name.lower(), f": {outcome.value:.6g}" if outcome.value is not None else "")
        if outcome.status == "interrupted":
            if trial.params and RETRY_OF not in trial.user_attrs:
                study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
            log.warning("trial %d was interrupted: marked failed, its parameters queued again; this worker stops", trial.number)
            self.stop.set()


def write_results(study: optuna.Study, sweep_dir: Path) -> None:
    """``optimization_results.yaml`` (hydra-optuna-sweeper's file): the best trial so far."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        log.warning("study %s has no completed trial yet", study.study_name)
        return
    best = study.best_trial
    results = {"name": "optuna", "study_name": study.study_name, "best_trial": best.number, "best_params": best.params, "best_value": best.value}
    write_atomic(sweep_dir / RESULTS_FILE, OmegaConf.to_yaml(results))
    log.info("best trial %d: %s = %s", best.number, best.params, best.value)


def check_launcher(launcher: Launcher, settings: SweeperSettings) -> None:
    """Jobs away from this process need a shared storage; the basic launcher runs one job at a time."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    local = isinstance(launcher, BasicLauncher)
    if local and settings.n_jobs > 1:
        raise ConfigError(
            "hydra.sweeper.n_jobs",
            settings.n_jobs,
            "the basic launcher runs one job at a time in this process: start more workers on one storage instead",
        )
    if not local and settings.storage is None:
        raise ConfigError("hydra.sweeper.storage", None, "jobs launched away from this process need a shared storage: a journal file path or a database URL")
