"""Exact resume: the random state and the loader's place in the epoch travel in checkpoints.

Lightning checkpoints hold weights, optimizer, scheduler and loop positions but not the random
number generators, so a resumed run would drop out different units than the run that was never
stopped, and a loader rebuilt mid-epoch would start the epoch's batches again. :class:`ExactResume`
saves every generator's state with each checkpoint, wherever it is written (an epoch end, or the
step an interruption stopped at), and restores it when the resumed training starts, after the
sanity check has drawn its own numbers. It also saves the training loader's position (the epoch
and how many of its batches training had taken) and hands it to the rebuilt loader's
:class:`~stagetune.engine.loaders.EpochSampler`, which skips those batches.
A run stopped and resumed ends with the same weights as one that ran straight through (on CPU,
with a fixed seed).
"""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from stagetune.engine.loaders import EpochSampler


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
    """Carries the random state and the training loader's position through checkpoints."""

    def __init__(self) -> None:
        self._pending: dict | None = None
        self._position = (0, 0)  # (epoch, batches of it handed to training)

    @property
    def state_key(self) -> str:
        return "ExactResume"

    def state_dict(self) -> dict:
        return {"rng": capture_rng(), "epoch": self._position[0], "batches": self._position[1]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        restore_rng(state["rng"])
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, EpochSampler) and loader.batch_size and "batches" in state:
            sampler.resume_at(state["epoch"], state["batches"] * loader.batch_size)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._position = (trainer.current_epoch, batch_idx + 1)
