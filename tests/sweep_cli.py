"""Running stagetune's command-line programs as a user would, for the sweep tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A ratings run of a second: 600 ratings, 1 epoch, no progress bar.
TINY = [
    "experiment=ratings_synthetic",
    "data.n_ratings=600",
    "data.n_users=50",
    "data.n_items=40",
    "data.batch_size=64",
    "plan.stages.all.epochs=1",
    "trainer.enable_progress_bar=false",
]


def run_module(module: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in ``cwd`` with this source tree importable."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
