"""How one run becomes several processes.

Lightning's ``ddp`` strategy normally re-executes the command line for every extra rank, which
re-runs a whole Hydra sweep when the command was ``stagetune -m ...``. stagetune launches the extra
ranks itself instead: rank 0 is the Hydra job; it writes the resolved config into the run
directory, starts ``python -m stagetune.commands.worker RUN_DIR`` for ranks 1..N-1 with the usual
``MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK/LOCAL_RANK`` variables, and sets the same variables for
itself. Lightning sees ``LOCAL_RANK`` and treats the processes as launched externally. Each sweep
job therefore gets its own process group on a fresh port and its own run directory.

Processes started by ``torchrun`` or SLURM (``RANK`` already set) are left to them: only global
rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import ListConfig

from stagetune.errors import ConfigError

DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def global_rank() -> int:
    """This process's rank as torchrun (``RANK``) or SLURM (``SLURM_PROCID``) set it; 0 alone."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def launched_externally() -> bool:
    """Whether torchrun, SLURM or a stagetune rank 0 started this process as one rank of many."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_count(trainer_cfg) -> int:
    """Processes per node for the configured devices; more GPUs than the machine has is an error."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    available = torch.cuda.device_count() if on_gpu else os.cpu_count() or 1
    devices = trainer_cfg.get("devices", "auto")
    if devices in (-1, "-1", "auto"):
        wanted = available
    elif isinstance(devices, (list, tuple, ListConfig)):
        wanted = len(devices)
    else:
        wanted = int(devices)
    if wanted < 1:
        raise ConfigError("trainer.devices", devices, "a number of devices >= 1, -1 or 'auto' for all of them, or a list of device ids")
    if trainer_cfg.get("sync_batchnorm") and not on_gpu:
        raise ConfigError(
            "trainer.sync_batchnorm",
            True,
            "SyncBatchNorm runs on GPUs only; on CPU (trainer=cpu, trainer=ddp_cpu) set trainer.sync_batchnorm=false "
            "(stagetune averages BatchNorm statistics over the ranks at every epoch end)",
        )
    if on_gpu and wanted > available or accelerator in ("gpu", "cuda") and available == 0:
        raise ConfigError(
            "trainer.devices",
            devices,
            f"this machine has {available} GPU(s); ask for at most {available}, or use trainer=cpu (one process) or trainer=ddp_cpu (DDP over CPU processes)",
        )
    return max(1, wanted)


def needs_launch(trainer_cfg) -> bool:
    """A multi-process ``ddp`` run that nobody has launched yet."""
    return (
        str(trainer_cfg.get("strategy", "auto")).startswith("ddp")
        and not launched_externally()
        and trainer_cfg.get("num_nodes", 1) == 1
        and process_count(trainer_cfg) > 1
    )


@contextlib.contextmanager
def ranks(trainer_cfg, run_dir: Path, ckpt_path: str | None, worker_env: dict[str, str] | None = None) -> Iterator[None]:
    """Start ranks 1..N-1 for a self-launched DDP run around the body of the ``with`` block.

    ``worker_env`` is added to their environment (the digest of the config they are to build).
    """
    if not needs_launch(trainer_cfg):
        yield
        return
    if str(trainer_cfg.get("strategy")) == "ddp_spawn":
        raise ConfigError("trainer.strategy", "ddp_spawn", "use ddp: stagetune launches the ranks itself")
    world = process_count(trainer_cfg)
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world),
        "NODE_RANK": "0",
    }
    saved = {k: os.environ.get(k) for k in DIST_VARS}
    workers = []
    for rank in range(1, world):
        args = [sys.executable, "-m", "stagetune.commands.worker", str(run_dir)]
        if ckpt_path:
            args.append(str(ckpt_path))
        rank_env = {**os.environ, **(worker_env or {}), **env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        workers.append(subprocess.Popen(args, env=rank_env))
    os.environ.update({**env, "RANK": "0", "LOCAL_RANK": "0"})
    try:
        yield
        for proc in workers:
            if proc.wait() != 0:
                raise RuntimeError(f"rank {workers.index(proc) + 1} exited with code {proc.returncode}")
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def hydra_args_for_rank(argv: list[str]) -> list[str]:
    """Command-line overrides that keep a non-zero rank started by torchrun/SLURM out of outputs/.

    Every rank composes the config, but only global rank 0 owns the run directory; the others
    let Hydra write into a scratch directory instead.
    """
    if global_rank() == 0:
        return argv
    scratch = tempfile.mkdtemp(prefix=f"stagetune-rank{global_rank()}-")
    return [*argv, f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
