"""Exact resume: the random state travels in checkpoints.

Lightning checkpoints hold weights, optimizer, scheduler and loop positions but not the random
number generators, so a resumed run would shuffle its data and drop out different units than the
run that was never stopped. :class:`ExactResume` saves every generator's state with each
checkpoint (saved after the epoch's validation, when nothing else will draw from them before the
next epoch) and restores it at the start of the first epoch after a resume, after the sanity
check has drawn its own numbers: a run killed and resumed ends with the same weights as one that
ran straight through (on CPU, with a fixed seed).
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
        self._pending: dict | None = None

    @property
    def state_key(self) -> str:
        return "ExactResume"

    def state_dict(self) -> dict:
        return {"rng": capture_rng()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("rng")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            restore_rng(self._pending)
            self._pending = None
