"""Validates and tests one fixed model with ``DEVICES`` CPU processes and writes the metrics: ``python -m tests.ddp_eval KIND DEVICES OUT``.

``KIND`` is ``vision`` (ResNet34 on 179 validation and 179 test digits) or ``ratings`` (dot
product on 179 synthetic validation and 179 test ratings). The weights are the
same whatever ``DEVICES`` is, so the metrics of 1 and 2 processes must agree
(tests/test_ddp_eval.py). With 2 processes Lightning's ``ddp`` strategy re-runs this command for
rank 1; rank 0 writes ``OUT``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from stagetune.collab.data import SyntheticRatings
from stagetune.collab.models import DotBias
from stagetune.vision.data import DigitsData
from stagetune.vision.models import ResNet34Classifier


class Counted(pl.Callback):
    """How many examples each rank evaluated, per split (gathered from every rank)."""

    def __init__(self) -> None:
        self.local = {"val": 0, "test": 0}
        self.per_rank: dict[str, list[int]] = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.local["val"] += len(batch[-1])

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.local["test"] += len(batch[-1])

    def on_validation_epoch_end(self, trainer, pl_module):
        self.per_rank["val"] = trainer.strategy.all_gather(torch.tensor(self.local["val"])).reshape(-1).tolist()

    def on_test_epoch_end(self, trainer, pl_module):
        self.per_rank["test"] = trainer.strategy.all_gather(torch.tensor(self.local["test"])).reshape(-1).tolist()


def build(kind: str) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    """The model (seeded weights) and its data; the loaders are built by the Trainer, once ranks exist."""
    torch.manual_seed(0)
    if kind == "vision":
        data = DigitsData(size=16, valid_pct=0.1, test_pct=0.1, eval_batch_size=32, num_workers=0)
        return ResNet34Classifier(weights=None, **data.model_kwargs()), data
    data = SyntheticRatings(n_users=30, n_items=40, n_ratings=895, test_pct=0.2, valid_pct=0.25, batch_size=64)
    data.valid_batch_size = 32
    return DotBias(n_factors=4, **data.model_kwargs()), data


def main(kind: str, devices: int, out: str) -> None:
    model, data = build(kind)
    counted = Counted()
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", use_distributed_sampler=False,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[counted],
    )  # fmt: skip
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    if trainer.is_global_zero:
        record = {"metrics": {**val, **test}, "per_rank": counted.per_rank, "world_size": trainer.world_size}
        Path(out).write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
