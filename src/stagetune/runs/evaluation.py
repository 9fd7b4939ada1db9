"""A trained run evaluated again: its metrics on a split, and what an image classifier got wrong.

The split is evaluated the way the run evaluated its chosen checkpoint (``evaluate_chosen`` in
``commands/train.py``): Lightning's ``validate``/``test`` through the engine's one Trainer factory
with the run's own ``trainer:`` settings (precision, ``limit_val_batches``...), on one device, so
the numbers equal those in the run's ``metrics.json``. An image classifier's logits are kept on
the way (its ``validation_step``/``test_step`` return them): the confusion matrix, the top losses
and the most-confused pairs are read from them without a second pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.nn import functional as F
from torchmetrics.functional.classification import multiclass_confusion_matrix

from stagetune.config import optim_of, plan_of, validate
from stagetune.engine.trainer import build_trainer, trainer_kwargs
from stagetune.errors import StagetuneError
from stagetune.runs.trained import Trained

SPLITS = {"valid": "val", "test": "test"}  # the command's name -> the metrics' prefix and the datamodule's split


class KeepLogits(Callback):
    """The logits and labels of every evaluated batch, where the model's step returns logits."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def _keep(self, outputs, batch) -> None:
        if isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
            self.logits.append(outputs.detach().float().cpu())
            self.targets.append(batch[-1].detach().cpu())

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep(outputs, batch)


@dataclass
class Evaluation:
    """A split's metrics; for a classifier also every example's logits and label, in the split's order."""

    split: str
    metrics: dict[str, float]
    logits: torch.Tensor | None
    targets: torch.Tensor | None

    @property
    def is_classifier(self) -> bool:
        return self.logits is not None

    def confusion(self) -> torch.Tensor:
        """Counts: row = true class, column = predicted class."""
        return multiclass_confusion_matrix(self.logits.argmax(1), self.targets, num_classes=self.logits.shape[1])

    def losses(self) -> torch.Tensor:
        return F.cross_entropy(self.logits, self.targets, reduction="none")

    def top_losses(self, n: int) -> list[int]:
        """fastai's ``top_losses``: the indices of the ``n`` examples with the highest loss, highest first."""
        return self.losses().argsort(descending=True)[:n].tolist()


def evaluation_trainer(trained: Trained, callbacks: list[Callback]) -> pl.Trainer:
    """The engine's Trainer with the run's ``trainer:`` settings, on the one device the model is on."""
    one_device = {
        "accelerator": "gpu" if trained.device.type == "cuda" else "cpu",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "enable_progress_bar": False,
    }
    cfg = validate(trained.cfg)
    return build_trainer(plan_of(cfg), optim_of(cfg), {**trainer_kwargs(cfg.trainer), **one_device}, callbacks=callbacks)


def evaluate(trained: Trained, split: str = "valid") -> Evaluation:
    """The run's metrics on ``split`` (``valid`` or ``test``) with the loaded checkpoint."""
    if split not in SPLITS:
        raise StagetuneError(f"--split {split}: use {' or '.join(SPLITS)}")
    data = trained.datamodule
    if split == "test" and not getattr(data, "has_test", False):
        raise StagetuneError(f"{trained.run.path}: its data has no test split; use --split valid")
    keep = KeepLogits()
    trainer = evaluation_trainer(trained, [keep])
    run = trainer.validate if split == "valid" else trainer.test
    results = run(trained.model, datamodule=data, verbose=False)
    trained.model.eval()
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if not keep.logits:
        return Evaluation(split, metrics, None, None)
    return Evaluation(split, metrics, torch.cat(keep.logits), torch.cat(keep.targets))
