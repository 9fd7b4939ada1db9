"""``hydra/sweeper=optuna``: one worker of a shared Optuna study, on Optuna's ask/tell API.

Hydra imports every module under ``hydra_plugins`` at start-up, so this one registers the configs
and defers Optuna and the worker loop (:mod:`stagetune.sweeps.worker`) to the first sweep.

Config groups: ``hydra/sweeper/sampler`` (tpe, random, grid) and ``hydra/sweeper/pruner`` (none,
median, successive_halving, hyperband); any key of the Optuna class may be added to either.
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig

from stagetune.sweeps.settings import SweeperSettings

log = logging.getLogger("stagetune")


@dataclass
class OptunaSweeperConf(SweeperSettings):
    """``hydra.sweeper`` for ``hydra/sweeper=optuna``: the worker's settings, its sampler, pruner and search space."""

    _target_: str = "hydra_plugins.stagetune_optuna.optuna_sweeper.OptunaSweeper"
    # The sampler and pruner reach the sweeper as configs: it builds a sampler per trial and hands
    # the pruner's config to each trial's job.
    _recursive_: bool = False
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    # The search space: {config key: sweep}, see stagetune.sweeps.space.
    params: Optional[dict[str, Any]] = None


SAMPLERS = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "grid": {"_target_": "optuna.samplers.GridSampler", "seed": None},
}
PRUNERS = {
    "none": {"_target_": "optuna.pruners.NopPruner"},
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 0, "interval_steps": 1},
    "successive_halving": {
        "_target_": "optuna.pruners.SuccessiveHalvingPruner",
        "min_resource": "auto",
        "reduction_factor": 4,
        "min_early_stopping_rate": 0,
    },
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": "auto", "reduction_factor": 3},
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="stagetune")
for name, node in SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="stagetune")
for name, node in PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="stagetune")


class OptunaSweeper(Sweeper):
    """Hydra's side of a study worker: checks the settings, then runs :class:`StudyWorker`."""

    def __init__(self, sampler: DictConfig, pruner: DictConfig, params: Optional[DictConfig] = None, **settings: Any) -> None:
        self.sampler_cfg, self.pruner_cfg, self.params = sampler, pruner, params
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        from stagetune.failures import task_wrapper

        # a bad setting is one line, as everywhere in stagetune; the sweeper is not one of its jobs
        task_wrapper("stagetune", sweep_job=lambda: False)(self._sweep)(arguments)

    def _sweep(self, arguments: list[str]) -> None:
        from stagetune.engine import launch
        from stagetune.errors import ConfigError
        from stagetune.sweeps.report import StudyReport
        from stagetune.sweeps.space import search_space
        from stagetune.sweeps.study import shown, storage_spec
        from stagetune.sweeps.worker import StudyWorker, check_launcher, pruner_spec, sampler_maker, write_results

        if launch.launched_externally():
            raise ConfigError(
                "hydra.sweeper",
                "optuna",
                "a study worker is one process (not torchrun/srun with several tasks): "
                "stagetune starts each trial's DDP ranks itself, or the launcher's jobs do (hydra/launcher=slurm)",
            )
        settings = SweeperSettings.of(self.settings, self.config.get("experiment"))
        settings.storage = storage_spec(settings.storage)
        settings.check()
        check_launcher(self.launcher, settings)
        space = search_space(self.params, arguments)
        sampler = sampler_maker(self.sampler_cfg, space)
        if str(self.sampler_cfg.get("_target_", "")).endswith("GridSampler"):
            size = 1
            for values in space.grid().values():
                size *= len(values)
            settings.n_trials = min(settings.n_trials, size)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        worker = StudyWorker(settings, space, sampler, pruner_spec(self.pruner_cfg), self.launcher, str(self.config.metric), sweep_dir)
        log.info(
            "study %s in %s: %d trials to %s, this worker %s",
            settings.study_name,
            shown(settings.storage),
            settings.n_trials,
            settings.direction,
            "runs one at a time" if settings.n_jobs == 1 else f"keeps {settings.n_jobs} in flight",
        )
        study = worker.run()
        log.info("this worker ran trials %s", ", ".join(map(str, worker.ran)) or "none")
        write_results(study, sweep_dir)
        report = StudyReport(study)
        paths = report.write(sweep_dir)
        print(report.markdown(), file=sys.stderr)
        print("study report: " + ", ".join(str(p) for p in paths), file=sys.stderr)
