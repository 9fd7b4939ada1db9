"""Shared fixtures: a tiny three-group network with BatchNorm and random data to train it on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stagetune.groups import LayerGroup
from stagetune.plan import StagedModule

ROOT = Path(__file__).resolve().parents[1]


class TinyNet(StagedModule):
    """Three layer groups (body_early with BatchNorm, body_late, head), a classification loss."""

    def __init__(self, n_in: int = 6, n_classes: int = 3, batchnorm: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm1d(8) if batchnorm else nn.Identity()
        self.early = nn.Sequential(nn.Linear(n_in, 8), norm, nn.ReLU())
        self.late = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.head(self.late(self.early(x)))

    def layer_groups(self):
        return [LayerGroup("body_early", (self.early,)), LayerGroup("body_late", (self.late,)), LayerGroup("head", (self.head,))]

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)


class TinyData(pl.LightningDataModule):
    def __init__(self, n: int = 64, n_in: int = 6, n_classes: int = 3, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, n_in, generator=g)
        self.y = torch.randint(0, n_classes, (n,), generator=g)
        self.batch_size = batch_size

    def model_kwargs(self) -> dict:
        return {}

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)


@pytest.fixture
def tiny():
    return TinyNet(), TinyData()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m stagetune ARGS`` the way a user would, capturing its output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "stagetune", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
