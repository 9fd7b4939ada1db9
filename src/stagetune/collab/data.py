"""Ratings data: a synthetic generator with known ground truth, batched from index tensors."""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from stagetune.loaders import epoch_loader


class RatingsTensor(Dataset):
    """Users, items and ratings as three tensors; indexed by a whole batch of positions at once."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        self.users, self.items, self.ratings = users, items, ratings

    def __len__(self) -> int:
        return len(self.ratings)

    def __getitem__(self, index):
        index = torch.as_tensor(index)
        return self.users[index], self.items[index], self.ratings[index]


def batch_loader(ds: RatingsTensor, batch_size: int, shuffle: bool) -> DataLoader:
    """One ``__getitem__`` per batch (a batch sampler feeding an index list), no per-row Python."""
    return epoch_loader(ds, batch_size, shuffle=shuffle, whole_batches=True)


class SyntheticRatings(pl.LightningDataModule):
    """Ratings drawn from a known low-rank model with biases, shaped like MovieLens 100k.

    ``rating = mean + b_u + b_i + u . v + noise``, clipped to 1-5 (optionally rounded to whole
    stars); items are picked with long-tailed (Zipf) popularity. ``noise_floor`` is the RMSE of the
    true model on the validation split: no model can expect to do better.
    """

    def __init__(
        self,
        n_users: int = 943,
        n_items: int = 1682,
        n_ratings: int = 100_000,
        rank: int = 8,
        factor_scale: float = 0.5,
        user_bias_scale: float = 0.4,
        item_bias_scale: float = 0.5,
        mean: float = 3.5,
        noise: float = 0.8,
        popularity_exponent: float = 1.0,
        round_stars: bool = False,
        valid_pct: float = 0.2,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: RatingsTensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        rng = np.random.default_rng(h.seed)
        users_f = rng.normal(0, h.factor_scale / math.sqrt(h.rank) ** 0.5, (h.n_users, h.rank))
        items_f = rng.normal(0, h.factor_scale / math.sqrt(h.rank) ** 0.5, (h.n_items, h.rank))
        b_u = rng.normal(0, h.user_bias_scale, h.n_users)
        b_i = rng.normal(0, h.item_bias_scale, h.n_items)
        popularity = 1.0 / np.arange(1, h.n_items + 1) ** h.popularity_exponent
        item_order = rng.permutation(h.n_items)
        pairs = np.unique(
            np.stack(
                [
                    rng.integers(0, h.n_users, 2 * h.n_ratings),
                    item_order[rng.choice(h.n_items, 2 * h.n_ratings, p=popularity / popularity.sum())],
                ],
                1,
            ),
            axis=0,
        )
        pairs = pairs[rng.permutation(len(pairs))[: h.n_ratings]]
        u, i = pairs[:, 0], pairs[:, 1]
        truth = np.clip(h.mean + b_u[u] + b_i[i] + (users_f[u] * items_f[i]).sum(1), 1, 5)
        ratings = np.clip(truth + rng.normal(0, h.noise, len(u)), 1, 5)
        if h.round_stars:
            ratings = np.round(ratings)
        n_val = int(round(len(u) * h.valid_pct))
        order = rng.permutation(len(u))
        val, train = order[:n_val], order[n_val:]
        self.noise_floor = float(np.sqrt(np.mean((ratings[val] - truth[val]) ** 2)))

        def tensors(idx):
            return RatingsTensor(
                torch.as_tensor(u[idx], dtype=torch.long),
                torch.as_tensor(i[idx], dtype=torch.long),
                torch.as_tensor(ratings[idx], dtype=torch.float32),
            )

        self.train_set, self.val_set = tensors(train), tensors(val)

    def model_kwargs(self) -> dict:
        self.setup()
        return {"n_users": self.hparams.n_users, "n_items": self.hparams.n_items}

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.val_set, 4096, shuffle=False)
