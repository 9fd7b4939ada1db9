"""Rating models: dot product with biases (fastai's EmbeddingDotBias) and an MLP (EmbeddingNN).

Both predict ``sigmoid_range(score + offset, lo, hi)``. ``offset`` is a fixed number,
``logit((global_mean - lo) / (hi - lo))``, so a score of 0 means "the training mean": an id never
seen in training (index 0, whose factors and biases stay zero) is predicted from the biases that
are known, and from the global mean when neither user nor item is known. Without ``global_mean``
the offset is 0 and the formula is exactly fastai's.
"""

from __future__ import annotations

import math

import torch
import torchmetrics
from pytorch_lightning import Callback
from torch import nn

from stagetune.collab.data import UNKNOWN
from stagetune.collab.interpret import Interpretation
from stagetune.errors import ConfigError
from stagetune.engine.groups import LayerGroup
from stagetune.engine.plan import StagedModule


def sigmoid_range(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Squash ``x`` into ``(lo, hi)``: ratings never leave the range."""
    return torch.sigmoid(x) * (hi - lo) + lo


def check_y_range(y_range) -> tuple[float, float]:
    """``[lo, hi]`` with finite ``lo < hi``, or a ConfigError naming ``model.y_range``."""
    try:
        lo, hi = (float(v) for v in y_range)
    except (TypeError, ValueError):
        raise ConfigError("model.y_range", y_range, "two numbers [lo, hi] with lo < hi") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError("model.y_range", list(y_range), "two finite numbers [lo, hi] with lo < hi")
    return lo, hi


def trunc_normal_embedding(n: int, dim: int, std: float = 0.01, sparse: bool = False) -> nn.Embedding:
    """``n`` known ids plus the unknown row 0, initialised as fastai does (truncated normal, std 0.01).

    Row 0 starts at zero and, as the padding index, never receives a gradient: it stays zero.
    ``sparse``: gradients name the rows a batch used (see :mod:`stagetune.engine.lazy_adam`).
    """
    emb = nn.Embedding(n + 1, dim, padding_idx=UNKNOWN, sparse=sparse)
    with torch.no_grad():
        nn.init.trunc_normal_(emb.weight, std=std, a=-2 * std, b=2 * std)
        emb.weight[UNKNOWN].zero_()
    return emb


def embedding_width(n: int) -> int:
    """fastai's rule of thumb for an embedding's width: ``min(600, round(1.6 * n**0.56))``."""
    return min(600, round(1.6 * n**0.56))


class RatingModule(StagedModule):
    """Shared logic for rating models: the range and offset, MSE loss, RMSE and MAE metrics."""

    def __init__(self, y_range, global_mean: float | None) -> None:
        super().__init__()
        self.y_lo, self.y_hi = check_y_range(y_range)
        offset = 0.0
        if global_mean is not None:
            p = min(max((global_mean - self.y_lo) / (self.y_hi - self.y_lo), 1e-3), 1 - 1e-3)
            offset = math.log(p / (1 - p))
        self.register_buffer("offset", torch.tensor(offset))
        # Sums and counts, reduced over DDP ranks: each split's metrics count every rating once.
        self.val_loss, self.test_loss = torchmetrics.MeanMetric(), torchmetrics.MeanMetric()
        self.val_rmse = torchmetrics.MeanSquaredError(squared=False)
        self.val_mae = torchmetrics.MeanAbsoluteError()
        self.test_rmse = torchmetrics.MeanSquaredError(squared=False)
        self.test_mae = torchmetrics.MeanAbsoluteError()
        self.train_loss, self.train_rmse = torchmetrics.MeanMetric(), torchmetrics.MeanSquaredError(squared=False)
        self.train_mae = torchmetrics.MeanAbsoluteError()

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return sigmoid_range(self.score(users, items) + self.offset, self.y_lo, self.y_hi)

    def configure_callbacks(self) -> list[Callback]:
        """The end-of-run interpretation; Lightning adds model-supplied callbacks to the Trainer's."""
        return [Interpretation()]

    def training_step(self, batch, batch_idx):
        users, items, ratings = batch
        loss = nn.functional.mse_loss(self(users, items), ratings)
        return loss

    def _evaluate(self, batch, split: str, loss, rmse, mae):
        users, items, ratings = batch
        pred = self(users, items)
        n = len(ratings)
        loss.update(nn.functional.mse_loss(pred, ratings), n)
        rmse.update(pred, ratings)
        mae.update(pred, ratings)
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=n, add_dataloader_idx=False)
        self.log(f"{split}/rmse", rmse, prog_bar=True, batch_size=n, add_dataloader_idx=False)
        self.log(f"{split}/mae", mae, batch_size=n, add_dataloader_idx=False)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """Loader 0 is valid; loader 1, when the end-of-run evaluation passes it, the training part
        (``train_eval/*``: the model in eval mode, apart from ``train/loss``, the epoch's running mean)."""
        if dataloader_idx == 1:
            self._evaluate(batch, "train_eval", self.train_loss, self.train_rmse, self.train_mae)
        else:
            self._evaluate(batch, "val", self.val_loss, self.val_rmse, self.val_mae)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test", self.test_loss, self.test_rmse, self.test_mae)


class DotBias(RatingModule):
    """``sigmoid_range(u . v + b_u + b_i + offset, lo, hi)`` with learned factors and biases."""

    def __init__(self, n_users: int, n_items: int, n_factors: int = 50, y_range=(0.0, 5.5),
                 global_mean: float | None = None, sparse: bool = False) -> None:
        super().__init__(y_range, global_mean)
        if n_factors < 1:
            raise ConfigError("model.n_factors", n_factors, "must be >= 1 (the width of the user and item factors)")
        self.save_hyperparameters()
        self.user_factors = trunc_normal_embedding(n_users, n_factors, sparse=sparse)
        self.item_factors = trunc_normal_embedding(n_items, n_factors, sparse=sparse)
        self.user_bias = trunc_normal_embedding(n_users, 1, sparse=sparse)
        self.item_bias = trunc_normal_embedding(n_items, 1, sparse=sparse)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user_factors(users) * self.item_factors(items)).sum(1)
        return dot + self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1)

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup("embeddings", (self.user_factors, self.item_factors)),
            LayerGroup("biases", (self.user_bias, self.item_bias)),
        ]


class CollabNN(RatingModule):
    """fastai's EmbeddingNN: concatenated user and item embeddings through an MLP.

    Hidden blocks are ``Linear(no bias) -> ReLU -> BatchNorm1d``, then a ``Linear`` to one score.
    Embedding widths default to fastai's rule (:func:`embedding_width`).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        layers=(100,),
        user_width: int | None = None,
        item_width: int | None = None,
        y_range=(0.0, 5.5),
        global_mean: float | None = None,
        sparse: bool = False,
    ) -> None:
        super().__init__(y_range, global_mean)
        self.save_hyperparameters()
        sizes = [int(s) for s in layers]
        if not sizes or any(s < 1 for s in sizes):
            raise ConfigError("model.layers", list(layers), "one or more hidden sizes, each >= 1")
        for key, width in (("model.user_width", user_width), ("model.item_width", item_width)):
            if width is not None and width < 1:
                raise ConfigError(key, width, "must be >= 1, or null for fastai's rule")
        self.user_factors = trunc_normal_embedding(n_users, user_width or embedding_width(n_users + 1), sparse=sparse)
        self.item_factors = trunc_normal_embedding(n_items, item_width or embedding_width(n_items + 1), sparse=sparse)
        blocks: list[nn.Module] = []
        width = self.user_factors.embedding_dim + self.item_factors.embedding_dim
        for size in sizes:
            blocks += [nn.Linear(width, size, bias=False), nn.ReLU(), nn.BatchNorm1d(size)]
            width = size
        blocks.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*blocks)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.user_factors(users), self.item_factors(items)], 1)).squeeze(1)

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup("embeddings", (self.user_factors, self.item_factors)),
            LayerGroup("mlp", (self.mlp,)),
        ]
