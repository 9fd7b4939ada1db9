"""Wall time of one Optuna study shared by N worker processes, from the first start to the last exit.

Each worker is a ``stagetune -m sweep=optuna`` process with one torch thread, all on one journal
file. The random sampler is seeded per trial number (stagetune.sweeps.sampler), so a study draws the
same 12 points whatever the number of workers, and pruning is off: both sides do the same work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
N_TRIALS = 12
# A ratings trial of ~8 s on one thread: 200,000 ratings, 10 epochs of batches of 1024.
STUDY = [
    "experiment=ratings_synthetic",
    "data.n_ratings=200000",
    "plan.stages.all.epochs=10",
    "logger=none",
    "sweep=optuna",
    "hydra/sweeper/sampler=random",
    "hydra/sweeper/pruner=none",
    f"hydra.sweeper.n_trials={N_TRIALS}",
]


def study_seconds(workers: int) -> float:
    """Seconds for ``workers`` processes to finish a fresh study of N_TRIALS trials (checked complete)."""
    with tempfile.TemporaryDirectory(prefix="stagetune-bench-study-") as tmp:
        journal = Path(tmp) / "study.log"
        args = [*STUDY, f"hydra.sweeper.storage={journal}", f"hydra.sweep.dir={Path(tmp) / 'sweep'}"]
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        started = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-m", "stagetune", "-m", *args], cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(workers)
        ]
        errors = [p.communicate()[1] for p in procs]
        seconds = time.perf_counter() - started
        for proc, err in zip(procs, errors):
            if proc.returncode != 0:
                raise RuntimeError(f"a study worker exited with {proc.returncode}: {err[-2000:]}")
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        states = [t.state for t in optuna.load_study(study_name="ratings_synthetic", storage=storage).get_trials()]
        if states.count(TrialState.COMPLETE) != N_TRIALS:
            raise RuntimeError(f"the study ended with {states}, not {N_TRIALS} complete trials")
        return seconds
