"""Running stagetune's commands as a user would: in a child process, with this source tree importable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lines of Lightning's and its neighbours' that a stagetune terminal never shows.
NOISE = (
    "💡 Tip",
    "litlogger",
    "LeafSpec",
    "GPU available",
    "TPU available",
    "will override",
    "Loading `train_dataloader`",
    "Trainer.fit` stopped",
    "multiple `ModelCheckpoint`",
    "weights_only` was not set",
)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m stagetune ARGS`` the way a user would, capturing its output."""
    if cwd is not None:
        Path(cwd).mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "stagetune", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_cli_env(env),
        preexec_fn=default_sigint,
    )


def start_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m stagetune ARGS`` in the background (output captured): runs that overlap."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "stagetune", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_cli_env(env),
        preexec_fn=default_sigint,
    )


def default_sigint() -> None:
    """In the child, before Python starts: SIGINT handled by default. A child of a shell that runs
    in the background inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler,
    so a signal test's Ctrl-C would do nothing under some runners."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli_env(env: dict | None) -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", **(env or {})}


def run_module(module: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in ``cwd`` with this source tree importable."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_cli_env(None))
