"""The training loss, logged once by the engine instead of by every model's ``self.log``.

Lightning's ``self.log`` costs one to two milliseconds a call on a CPU: for the ratings model,
whose whole step takes about two, that alone made training a third slower than a plain loop.
Models return their loss from ``training_step``; this callback keeps the epoch's running mean on
the loss's device (no host sync per step), writes ``train/loss_step`` straight to the loggers
every ``trainer.log_every_n_steps`` steps, and logs the epoch mean as ``train/loss`` through
``self.log`` once an epoch, so it reaches ``callback_metrics``, ``metrics.json`` and the bar.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.data import extract_batch_size


def batch_size(batch: Any) -> int:
    """Examples in ``batch``: a leading tensor's length, read directly (Lightning's ``extract_batch_size``
    walks the whole collection, ten Python calls a step for ``(users, items, ratings)``), else Lightning's."""
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if isinstance(first, torch.Tensor) and first.ndim:
        return len(first)
    return extract_batch_size(batch)


class TrainingLoss(pl.Callback):
    """Per-step and per-epoch training loss; its running sum is checkpointed for exact resumes."""

    def __init__(self) -> None:
        self._epoch = -1
        self._sum: torch.Tensor | float = 0.0
        self._count = 0
        self._step = 0
        self.last: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch != trainer.current_epoch:  # a resume mid-epoch keeps the restored sum
            self._epoch, self._sum, self._count = trainer.current_epoch, 0.0, 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._step = trainer.global_step  # the step this batch belongs to, as the LRs are logged

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()  # a bf16 sum would lose digits
        if trainer.accumulate_grad_batches != 1:  # Lightning hands over the loss divided by the accumulation factor
            loss = loss * trainer.accumulate_grad_batches
        n = batch_size(batch)
        if isinstance(self._sum, torch.Tensor):
            self._sum.add_(loss, alpha=n)  # in place: one operation a step (its first step made the tensor)
        else:
            self._sum = loss * n + self._sum
        self._count += n
        self.last = loss
        if trainer.loggers and self._step % trainer.log_every_n_steps == 0:
            for logger in trainer.loggers:
                logger.log_metrics({"train/loss_step": float(loss)}, step=self._step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._count:
            mean = torch.as_tensor(self._sum, dtype=torch.float32) / self._count
            pl_module.log("train/loss", mean, on_epoch=True, prog_bar=True, sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "sum": float(self._sum), "count": self._count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._epoch, self._sum, self._count = state_dict["epoch"], state_dict["sum"], state_dict["count"]
