"""What the sweep tests share: a ratings run of a second, and the commands run as a user would."""

from __future__ import annotations

from tests.helpers.cli import ROOT, run_module

__all__ = ["ROOT", "TINY", "run_module"]

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
