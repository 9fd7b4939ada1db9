"""Exact resume: the random state travels in checkpoints.

Lightning checkpoints hold weights, optimizer, scheduler and loop positions but not the random
number generators, so a resumed run would shuffle its data and drop out different units than the
run that was never stopped. :class:`ExactResume` saves every generator's state at each epoch end
and restores it at the start of the first epoch after a resume: a run killed and resumed ends with
the same weights as one that ran straight through (on CPU, with a fixed seed).
"""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


def capture_rng() -> dict:
    """Every generator's state, as tensors and plain numbers (loadable with ``weights_only``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume(Callback):
    """Carries the random state of each epoch boundary through checkpoints."""

    def __init__(self) -> None:
        self._at_epoch_end: dict | None = None
        self._pending: dict | None = None

    @property
    def state_key(self) -> str:
        return "ExactResume"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._at_epoch_end = capture_rng()

    def state_dict(self) -> dict:
        return {"rng": self._at_epoch_end} if self._at_epoch_end is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("rng")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            restore_rng(self._pending)
            self._pending = None
