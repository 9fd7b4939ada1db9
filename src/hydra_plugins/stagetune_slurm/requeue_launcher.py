"""``hydra/launcher=slurm`` and ``slurm_cpu``: Hydra's submitit launcher, where a requeued job continues its run.

SLURM requeues a job (``scontrol requeue``, a preemption, submitit's own requeue at a timeout) by
running the same batch script again: submitit calls the launcher with the job's original overrides,
and the run would start afresh in a directory that already holds it, and be refused. Here the
attempt after a requeue (``SLURM_RESTART_COUNT`` >= 1) whose run directory holds a run becomes
``resume=RUN_DIR``: the run continues from its ``last.ckpt`` (saved when the requeue's SIGTERM
reached it) with its own config, exactly where it stopped; a completed run is left as it is.
"""

import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from omegaconf import OmegaConf, open_dict

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

log = logging.getLogger("stagetune")


def restart_count() -> int:
    """How many times SLURM has requeued this job (0 on its first run, or outside SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


class RequeueResumingSlurmLauncher(SlurmLauncher):
    """Submits each sweep job to SLURM (submitit); a requeued job resumes its run directory."""

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: dict[type, Singleton]) -> Any:
        if restart_count():
            Singleton.set_state(singleton_state)
            run_dir = self.run_dir(sweep_overrides, job_dir_key, job_num)
            if (run_dir / "config.yaml").exists():
                log.info("requeued (restart %d): resuming %s", restart_count(), run_dir)
                sweep_overrides = [f"resume={run_dir}"]
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def run_dir(self, sweep_overrides: list[str], job_dir_key: str, job_num: int) -> Path:
        """The job's output directory, as Hydra's ``run_job`` names it: ``hydra.sweep.dir/hydra.sweep.subdir``."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(sweep_overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = job_num
        HydraConfig.instance().set_config(config)
        return Path(str(OmegaConf.select(config, job_dir_key))).absolute() / str(OmegaConf.select(config, "hydra.sweep.subdir"))
