"""Your own LightningModule trained in stages by stagetune's engine: plain Lightning, no Hydra, no config files.

The model is an ordinary ``pl.LightningModule`` with two additions: ``layer_groups()`` (the
ordered slices of its parameters a plan freezes and gives rates to) and ``configure_optimizers``
returning ``staged_optimizers(self)``. The plan trains the head alone with the body frozen until
``val/loss`` stops improving (at most 12 epochs), puts back that stage's best weights, then trains
everything for 3 epochs with a discriminative slice. Runs in a few seconds on a CPU::

    python examples/own_module.py

examples/own_module_hydra/ runs the same module through stagetune's Hydra configs.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stagetune import LayerGroup, Plan, Stage, StagePlan, Until, staged_optimizers


class Classifier(pl.LightningModule):
    """A small MLP classifier: a two-layer body and a linear head."""

    def __init__(self, n_in: int = 8, n_classes: int = 3, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def layer_groups(self) -> list[LayerGroup]:
        return [LayerGroup("body", (self.body,)), LayerGroup("head", (self.head,))]

    def configure_optimizers(self):
        return staged_optimizers(self)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)


class Blobs(pl.LightningDataModule):
    """Points labelled by which of ``n_classes`` random directions they lie closest to (seeded)."""

    def __init__(self, n: int = 512, n_in: int = 8, n_classes: int = 3, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, n_in, generator=g)
        y = (x @ torch.randn(n_in, n_classes, generator=g)).argmax(1)
        cut = n * 4 // 5
        self.train_set, self.val_set = TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])
        self.n_in, self.n_classes, self.batch_size = n_in, n_classes, batch_size

    def model_kwargs(self) -> dict:
        """What a model built for this data needs (stagetune's runs pass it to the model's constructor)."""
        return {"n_in": self.n_in, "n_classes": self.n_classes}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def main() -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    plan = Plan(
        stages={
            "frozen": Stage(freeze_to=-1, epochs=12, lr=[5e-2], until=Until(monitor="val/loss", patience=2), restore_best=True),
            "unfrozen": Stage(freeze_to=0, epochs=3, lr=[1e-3, 1e-2]),
        }
    )
    trainer = pl.Trainer(
        max_epochs=plan.total_epochs,
        callbacks=[StagePlan(plan)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Classifier(), datamodule=Blobs())
    for stage in StagePlan.of(trainer).stages:
        rates = ", ".join(f"{group} {lr:.1e}" for group, lr in stage.lrs.items())
        print(f"stage {stage.name}: epochs {stage.first_epoch + 1}-{stage.last_epoch + 1}, training {rates}")
    print(f"val/acc {float(trainer.callback_metrics['val/acc']):.3f}")
    return trainer


if __name__ == "__main__":
    main()
