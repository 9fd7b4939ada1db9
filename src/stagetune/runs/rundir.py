"""Where a run writes and what it records.

A run directory holds the resolved config (``config.yaml``) and the command-line overrides,
``checkpoints/`` (``last.ckpt`` and the best by the configured metric), ``tensorboard/`` and
``metrics.json`` (status, final and best metrics, a row per stage). ``run.json`` records what is
needed to reproduce it: command line, git commit and dirty flag, package versions.
Readers (report, predict, resume) go through this module rather than guessing paths.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG = "config.yaml"
METRICS = "metrics.json"
RUN_INFO = "run.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
PACKAGES = ("stagetune", "torch", "torchvision", "pytorch-lightning", "hydra-core", "torchmetrics", "tensorboard")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=float) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def git_state(cwd: Path) -> dict:
    """The commit of the source tree that ran, and whether it had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class RunDir:
    """A run directory on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def checkpoint(self, which: str = "best") -> Path:
        """``best`` (by the run's metric) or ``last``; the other one when only one exists."""
        if which not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {which!r}")
        last = self.checkpoints / "last.ckpt"
        best = None
        if self.metrics_path.exists():
            recorded = read_json(self.metrics_path).get("best", {}).get("checkpoint")
            best = Path(recorded) if recorded else None
        if which == "best" and best is not None and best.exists():
            return best
        if last.exists():
            return last
        raise FileNotFoundError(f"no checkpoint in {self.checkpoints}")

    def config(self) -> DictConfig:
        path = self.path / CONFIG
        if not path.exists():
            raise FileNotFoundError(f"{self.path} is not a stagetune run directory (no {CONFIG})")
        return OmegaConf.load(path)

    def overrides(self) -> list[str]:
        """The command-line overrides the run was started with (empty if none were recorded)."""
        path = self.path / "overrides.yaml"
        return list(OmegaConf.load(path)) if path.exists() else []

    def metrics(self) -> dict:
        return read_json(self.metrics_path) if self.metrics_path.exists() else {}

    def save_config(self, cfg: DictConfig, overrides: list[str]) -> None:
        write_atomic(self.path / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        write_atomic(self.path / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))

    def save_run_info(self, source: Path) -> None:
        info = {
            "argv": list(sys.argv),
            "cwd": os.getcwd(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "git": git_state(source),
            "packages": package_versions(),
        }
        write_json(self.path / RUN_INFO, info)

    def update_metrics(self, **fields: Any) -> dict:
        """Merge ``fields`` into ``metrics.json`` (atomically) and return the whole record."""
        data = self.metrics()
        data.update(fields)
        write_json(self.metrics_path, data)
        return data
