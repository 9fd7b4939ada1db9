"""Shared fixtures and the helper that runs the command line as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stagetune.runs.targets import TRUST_ENV
from tests.tiny import TinyData, TinyNet

ROOT = Path(__file__).resolve().parents[1]
# The tiny model, data and callbacks are rebuilt from run directories (resume, predict): trust them
# the way a user trusts their own code (docs/howto/security.md); every other foreign target stays refused.
os.environ.setdefault(TRUST_ENV, "tests.tiny")


@pytest.fixture
def tiny():
    return TinyNet(), TinyData()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m stagetune ARGS`` the way a user would, capturing its output."""
    if cwd is not None:
        Path(cwd).mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "stagetune", *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=_cli_env(env)
    )


def start_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m stagetune ARGS`` in the background (output captured): runs that overlap."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "stagetune", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cli_env(env)
    )


def _cli_env(env: dict | None) -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", **(env or {})}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: extra torch threads only contend for the shared cores (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
