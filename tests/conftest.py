"""Shared fixtures and the helper that runs the command line as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import TinyData, TinyNet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny():
    return TinyNet(), TinyData()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m stagetune ARGS`` the way a user would, capturing its output."""
    if cwd is not None:
        Path(cwd).mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "stagetune", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
