"""Where a run writes and what it records.

A run directory holds the resolved config (``config.yaml``) and the command-line overrides,
``checkpoints/`` (``last.ckpt`` and the best by the configured metric), ``tensorboard/`` and
``metrics.json`` (status, final and best metrics, a row per stage). ``run.json`` records what is
needed to reproduce it: command line, git commit and dirty flag, package versions.
Readers (report, predict, resume) go through this module rather than guessing paths.

The records are append-only: ``config.yaml``, ``overrides.yaml`` and ``run.json`` are written once,
when the run starts; a resume adds an entry to ``run.json``'s ``resumes`` and rewrites nothing.
A run has one writer: the process holding an exclusive lock on ``.lock`` (``flock``; the kernel
drops it when the process dies), and a new run never starts in a directory that holds one.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stagetune.atomic import write_atomic
from stagetune.errors import ConfigError, StagetuneError
from stagetune.runs.swept import job_label
from stagetune.runs.targets import check_run_config

CONFIG = "config.yaml"
OVERRIDES = "overrides.yaml"
METRICS = "metrics.json"
RUN_INFO = "run.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOCK = ".lock"
HISTORY = "history.csv"
# What a run writes about itself (Hydra adds .hydra/ and train.log): no command writes its output there.
RECORDS = (CONFIG, OVERRIDES, RUN_INFO, METRICS, CHECKPOINTS, TENSORBOARD, LOCK, HISTORY, ".hydra", "train.log")
# Records named by what made them: stagetune-eval's ``eval-<split>[-N].*``, a stage's ``stage-<name>-*.png``.
RECORD_PREFIXES = ("eval-", "stage-")


def is_record(name: str) -> bool:
    """Whether ``name``, at the top of a run directory, is one of the run's own records."""
    return name in RECORDS or name.startswith(RECORD_PREFIXES)


CONFIG_DIGEST_ENV = "STAGETUNE_CONFIG_SHA256"
PACKAGES = ("stagetune", "torch", "torchvision", "pytorch-lightning", "hydra-core", "torchmetrics", "tensorboard")


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


class RunDirTaken(StagetuneError):
    """The directory holds another run, or another process is writing it: choose another (exit 2)."""

    exit_code = 2


@dataclass
class _Writer:
    fd: int  # the open lock file; closing it (or dying) drops the lock
    started: bool = False  # this process wrote the run's "running" status, so it records how it ends


_writers: dict[Path, _Writer] = {}  # the run directories this process writes


def check_resume_overrides(resume: str, overrides: list[str]) -> None:
    """``resume=`` continues with the run's own config: any other override would be silently ignored."""
    extra = [arg for arg in overrides if arg.partition("=")[0].lstrip("+~") != "resume"]
    if extra:
        raise ConfigError(
            "resume",
            resume,
            f"continues the run with its own config.yaml and takes no other overrides; refused: {' '.join(extra)} (to train with them, start a new run)",
        )


class RunDir:
    """A run directory on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        """``tensorboard/``; in a sweep job, ``tensorboard/<swept key=value,...>``, the name TensorBoard shows."""
        label = job_label(self.swept(), self.overrides())
        return self.path / TENSORBOARD / label if label else self.path / TENSORBOARD

    def swept(self) -> list[str]:
        """The keys the sweep this run belongs to turned (empty for a single run)."""
        path = self.path / RUN_INFO
        return list(read_json(path).get("swept", [])) if path.exists() else []

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
            recorded = self.metrics().get("best", {}).get("checkpoint")
            best = self.recorded_path(recorded) if recorded else None
        if which == "best" and best is not None and best.exists():
            return best
        if last.exists():
            return last
        raise FileNotFoundError(f"no checkpoint in {self.checkpoints}")

    def relative(self, path: str | Path) -> str:
        """``path`` as a run records it: relative to the run directory, so a copied or moved run reads its
        own files (a file outside it, a ``--ckpt`` given by path, stays absolute)."""
        resolved = Path(path).resolve()
        return str(resolved.relative_to(self.path)) if resolved.is_relative_to(self.path) else str(resolved)

    def recorded_path(self, recorded: str) -> Path:
        """A path the run recorded, in this directory wherever it now is. An absolute one (recorded
        before paths were kept relative) that lies outside it names a file of the directory the run
        was copied from: this run's file of the same name in ``checkpoints/`` is its own."""
        path = Path(recorded)
        if not path.is_absolute():
            return self.path / path
        return path if path.is_relative_to(self.path) else self.checkpoints / path.name

    def config(self) -> DictConfig:
        """``config.yaml`` as written: to read values. To build objects from it, :meth:`checked_config`."""
        path = self.path / CONFIG
        if not path.exists():
            raise FileNotFoundError(f"{self.path} is not a stagetune run directory (no {CONFIG})")
        try:
            cfg = OmegaConf.load(path)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StagetuneError(f"{path} is not a readable config ({first}); it was written when the run started: restore it") from None
        if not isinstance(cfg, DictConfig):
            raise StagetuneError(f"{path} holds a list, not a run's config; it was written when the run started: restore it")
        return cfg

    def checked_config(self) -> DictConfig:
        """``config.yaml`` to rebuild objects from: refused unless every ``_target_`` is allowlisted."""
        try:
            cfg = self.config()
        except FileNotFoundError as err:
            raise StagetuneError(str(err)) from None
        return check_run_config(cfg, self.path / CONFIG)

    def worker_env(self) -> dict[str, str]:
        """What the ranks a rank 0 starts need to build from the config it wrote or checked: its SHA-256.

        Empty without a config (a rank that torchrun started composes its own and starts none).
        """
        path = self.path / CONFIG
        return {CONFIG_DIGEST_ENV: hashlib.sha256(path.read_bytes()).hexdigest()} if path.exists() else {}

    def rank_config(self) -> DictConfig:
        """The config a started rank builds: the very file its rank 0 vouched for, else a checked one."""
        vouched = os.environ.get(CONFIG_DIGEST_ENV)
        if not vouched:
            return self.checked_config()
        text = (self.path / CONFIG).read_bytes()
        if hashlib.sha256(text).hexdigest() != vouched:
            raise StagetuneError(f"{self.path / CONFIG} changed after rank 0 started the run; not building it")
        return OmegaConf.create(text.decode())

    def overrides(self) -> list[str]:
        """The command-line overrides the run was started with (empty if none were recorded)."""
        path = self.path / OVERRIDES
        return list(OmegaConf.load(path)) if path.exists() else []

    def metrics(self) -> dict:
        """``metrics.json`` (empty before the run wrote it); a file that is not a JSON object is one error naming it."""
        if not self.metrics_path.exists():
            return {}
        try:
            data = read_json(self.metrics_path)
        except (ValueError, UnicodeDecodeError) as err:
            raise StagetuneError(f"{self.metrics_path} is not valid JSON ({err}); stagetune writes it whole: was it edited?") from None
        if not isinstance(data, dict):
            raise StagetuneError(f"{self.metrics_path} holds a {type(data).__name__}, not a run's record")
        return data

    def save_config(self, cfg: DictConfig, overrides: list[str]) -> None:
        write_atomic(self.path / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        write_atomic(self.path / OVERRIDES, OmegaConf.to_yaml(OmegaConf.create(list(overrides))))

    def save_run_info(self, source: Path, swept: list[str] | None = None) -> None:
        info = {
            "argv": list(sys.argv),
            "swept": list(swept or []),
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

    def claim(self, advice: str) -> None:
        """Become the run's one writer (an exclusive lock on ``.lock``) or fail saying who holds it.

        The lock is held until :meth:`release`, :meth:`record_failure` or the end of the process.
        """
        if self.path in _writers:  # this process already writes it (an earlier call that failed)
            _writers[self.path].started = False
            return
        fd = self._locked(advice)
        while not self._is_lock_file(fd):  # the writer before removed it as it finished: lock the file that is there now
            os.close(fd)
            fd = self._locked(advice)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {platform.node()}\n".encode())
        _writers[self.path] = _Writer(fd)

    def _locked(self, advice: str) -> int:
        """``.lock`` opened and exclusively locked, or the refusal naming its holder (read only: a refused run writes nothing there)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StagetuneError(f"cannot write the run directory {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirTaken(f"{self.path} is being written by another stagetune run ({holder}); {advice}") from None
        return fd

    def _is_lock_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path / LOCK).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Stop writing the run: ``.lock`` is removed (while still held, so no run takes a file about to go) and closed."""
        writer = _writers.pop(self.path, None)
        if writer is not None:
            if self._is_lock_file(writer.fd):
                (self.path / LOCK).unlink()
            os.close(writer.fd)

    def claim_fresh(self) -> None:
        """Claim the directory for a new run; one that holds a run already is refused, with how to continue it."""
        self.claim("start the new run in another directory (hydra.run.dir=DIR)")
        if (self.path / CONFIG).exists():
            self.release()
            status = self.metrics().get("status", "unknown")
            raise RunDirTaken(
                f"{self.path} already holds a run (status: {status}); continue it with `stagetune resume={self.path}`, "
                "or start the new run in another directory (hydra.run.dir=DIR)"
            )
        _writers[self.path].started = True

    def claim_resume(self) -> dict | None:
        """Claim a run to continue it; a completed run is left untouched, and its ``metrics.json`` returned.

        Completed is final (nothing writes a completed run), so it is seen without taking the lock;
        it is looked at again once the lock is held, in case another resume just finished it.
        """
        if not (self.path / CONFIG).exists():
            raise StagetuneError(f"{self.path} is not a stagetune run directory (no {CONFIG}); nothing to resume")
        done = self.completed()
        if done is None:
            self.claim(f"resume it once it has stopped: stagetune resume={self.path}")
            done = self.completed()
            if done is not None:
                self.release()
        return done

    def completed(self) -> dict | None:
        """``metrics.json`` when the run completed (a final state: nothing writes a completed run again)."""
        metrics = self.metrics()
        return metrics if metrics.get("status") == "completed" else None

    def record_resume(self, source: Path, from_step: int | None) -> None:
        """Append this resume to ``run.json`` (what is there stays byte for byte) and mark the run running."""
        info = read_json(self.path / RUN_INFO) if (self.path / RUN_INFO).exists() else {}
        metrics = self.metrics()
        entry = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": list(sys.argv),
            "git": git_state(source),
            "from_step": from_step,
            "previous_status": metrics.get("status"),
        }
        if "error" in metrics:  # kept here: metrics.json describes the run as it goes on
            entry["previous_error"] = metrics.pop("error")
        info.setdefault("resumes", []).append(entry)
        write_json(self.path / RUN_INFO, info)
        write_json(self.metrics_path, {**metrics, "status": "running"})
        _writers[self.path].started = True

    def record_failure(self, status: str, error: str) -> bool:
        """Record how the run stopped, only if this process is its writer and started it; release it.
        Whether it was recorded."""
        writer = _writers.get(self.path)
        if writer is None:
            return False
        if writer.started:
            self.update_metrics(status=status, error=error)
        self.release()
        return writer.started
