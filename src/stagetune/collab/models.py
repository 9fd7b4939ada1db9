"""Rating models: dot product with user and item biases (fastai's EmbeddingDotBias)."""

from __future__ import annotations

import torch
import torchmetrics
from torch import nn

from stagetune.groups import LayerGroup
from stagetune.plan import StagedModule


def sigmoid_range(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Squash ``x`` into ``(lo, hi)``: ratings never leave the range."""
    return torch.sigmoid(x) * (hi - lo) + lo


def trunc_normal_embedding(n: int, dim: int, std: float = 0.01) -> nn.Embedding:
    """An embedding initialised as fastai does: truncated normal, std 0.01."""
    emb = nn.Embedding(n, dim)
    with torch.no_grad():
        nn.init.trunc_normal_(emb.weight, std=std, a=-2 * std, b=2 * std)
    return emb


class RatingModule(StagedModule):
    """Shared training logic for rating models: MSE loss, RMSE and MAE metrics."""

    def __init__(self, y_range: tuple[float, float]) -> None:
        super().__init__()
        lo, hi = float(y_range[0]), float(y_range[1])
        if not lo < hi:
            raise ValueError(f"y_range must be [lo, hi] with lo < hi, got {list(y_range)}")
        self.y_lo, self.y_hi = lo, hi
        self.val_rmse = torchmetrics.MeanSquaredError(squared=False)
        self.val_mae = torchmetrics.MeanAbsoluteError()
        self.test_rmse = torchmetrics.MeanSquaredError(squared=False)
        self.test_mae = torchmetrics.MeanAbsoluteError()

    def training_step(self, batch, batch_idx):
        users, items, ratings = batch
        loss = nn.functional.mse_loss(self(users, items), ratings)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(ratings))
        return loss

    def _evaluate(self, batch, split: str, rmse, mae):
        users, items, ratings = batch
        pred = self(users, items)
        loss = nn.functional.mse_loss(pred, ratings)
        rmse.update(pred, ratings)
        mae.update(pred, ratings)
        n = len(ratings)
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log(f"{split}/rmse", rmse, prog_bar=True, batch_size=n)
        self.log(f"{split}/mae", mae, batch_size=n)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val", self.val_rmse, self.val_mae)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test", self.test_rmse, self.test_mae)


class DotBias(RatingModule):
    """``sigmoid_range(u . v + b_u + b_i, lo, hi)`` with learned user/item factors and biases."""

    def __init__(self, n_users: int, n_items: int, n_factors: int = 50, y_range=(0.0, 5.5)) -> None:
        super().__init__(y_range)
        self.save_hyperparameters()
        self.user_factors = trunc_normal_embedding(n_users, n_factors)
        self.item_factors = trunc_normal_embedding(n_items, n_factors)
        self.user_bias = trunc_normal_embedding(n_users, 1)
        self.item_bias = trunc_normal_embedding(n_items, 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user_factors(users) * self.item_factors(items)).sum(1)
        bias = self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1)
        return sigmoid_range(dot + bias, self.y_lo, self.y_hi)

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup("embeddings", (self.user_factors, self.item_factors)),
            LayerGroup("biases", (self.user_bias, self.item_bias)),
        ]
