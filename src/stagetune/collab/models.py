"""Rating models: dot product with biases (fastai's EmbeddingDotBias), SVD++ (the same with the
user's implicit feedback) and an MLP (EmbeddingNN).

All predict ``sigmoid_range(score + offset, lo, hi)``. ``offset`` is a fixed number,
``logit((global_mean - lo) / (hi - lo))``, so a score of 0 means "the training mean": an id never
seen in training (index 0, whose factors and biases stay zero) is predicted from the biases that
are known, and from the global mean when neither user nor item is known. Without ``global_mean``
the offset is 0 and the formula is exactly fastai's.

``freq_wd`` (``model.freq_wd``, default 0) is the frequency-aware L2 of classic SGD matrix
factorisation: every rating adds ``freq_wd * sum ||row||^2`` over the embedding rows it uses (the
user's and the item's factors and biases), and the loss of a batch ``B`` is
``MSE_B + freq_wd * mean_{(u,i) in B} (||p_u||^2 + ||q_i||^2 + b_u^2 + b_i^2)``. Over the whole
training part (``N`` ratings) this is exactly ``MSE + freq_wd * sum_rows count(row)/N * ||row||^2``
(``count``: the row's training ratings), and a shuffled epoch's batches average to it: a row
is penalised as often as it is used, so rare ids are held less than popular ones only in
proportion to the evidence. Only the rows a batch uses get a gradient, so ``model.sparse=true``
stays sparse and computes the same number. It is separate from ``optim.wd`` (which decays every
row alike); set that to 0 for the classic recipe.
"""

from __future__ import annotations

import math

import torch
import torchmetrics
from pytorch_lightning import Callback
from torch import nn

from stagetune.collab.data import UNKNOWN, RatedItems
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
    trunc_normal_rows(emb.weight, std)
    return emb


def trunc_normal_rows(weight: torch.Tensor, std: float = 0.01) -> None:
    """fastai's embedding init in place (truncated normal at +-2 std), the unknown row 0 zero."""
    with torch.no_grad():
        nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
        weight[UNKNOWN].zero_()


def embedding_width(n: int) -> int:
    """fastai's rule of thumb for an embedding's width: ``min(600, round(1.6 * n**0.56))``."""
    return min(600, round(1.6 * n**0.56))


class RatingModule(StagedModule):
    """Shared logic for rating models: the range and offset, MSE loss, RMSE and MAE metrics."""

    def __init__(self, y_range, global_mean: float | None, freq_wd: float = 0.0) -> None:
        super().__init__()
        self.y_lo, self.y_hi = check_y_range(y_range)
        if not (math.isfinite(freq_wd) and freq_wd >= 0):
            raise ConfigError("model.freq_wd", freq_wd, "a finite number >= 0 (0: no frequency-aware L2)")
        self.freq_wd = float(freq_wd)
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

    def penalised(self) -> tuple[tuple[nn.Embedding, ...], tuple[nn.Embedding, ...]]:
        """The user tables and the item tables whose rows ``freq_wd`` holds."""
        return (self.user_factors,), (self.item_factors,)

    def frequency_penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``mean`` over the batch of each rating's ``sum ||row||^2`` (see the module doc)."""
        user_tables, item_tables = self.penalised()
        per_rating = sum(t(users).pow(2).sum(1) for t in user_tables) + sum(t(items).pow(2).sum(1) for t in item_tables)
        return per_rating.mean()

    def loss(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """The loss training minimises: MSE, plus the frequency-aware L2 when ``freq_wd > 0``."""
        loss = nn.functional.mse_loss(self(users, items), ratings)
        if self.freq_wd:
            loss = loss + self.freq_wd * self.frequency_penalty(users, items)
        return loss

    def configure_callbacks(self) -> list[Callback]:
        """The end-of-run interpretation; Lightning adds model-supplied callbacks to the Trainer's."""
        return [Interpretation()]

    def training_step(self, batch, batch_idx):
        return self.loss(*batch)

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
                 global_mean: float | None = None, sparse: bool = False, freq_wd: float = 0.0,
                 rated: RatedItems | None = None) -> None:
        """``rated`` (the training part's items per user, from ``model_kwargs()``) is read by SVD++ only."""
        super().__init__(y_range, global_mean, freq_wd)
        if n_factors < 1:
            raise ConfigError("model.n_factors", n_factors, "must be >= 1 (the width of the user and item factors)")
        self.save_hyperparameters(ignore=["rated"])
        self.user_factors = trunc_normal_embedding(n_users, n_factors, sparse=sparse)
        self.item_factors = trunc_normal_embedding(n_items, n_factors, sparse=sparse)
        self.user_bias = trunc_normal_embedding(n_users, 1, sparse=sparse)
        self.item_bias = trunc_normal_embedding(n_items, 1, sparse=sparse)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user_factors(users) * self.item_factors(items)).sum(1)
        return dot + self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1)

    def penalised(self) -> tuple[tuple[nn.Embedding, ...], tuple[nn.Embedding, ...]]:
        return (self.user_factors, self.user_bias), (self.item_factors, self.item_bias)

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup("embeddings", (self.user_factors, self.item_factors)),
            LayerGroup("biases", (self.user_bias, self.item_bias)),
        ]


class SVDpp(DotBias):
    """SVD++: ``b_u + b_i + q_i . (p_u + |N(u)|^-1/2 * sum_{j in N(u)} y_j)``, then DotBias's range.

    ``N(u)`` is the items user ``u`` rated in the training part (``rated``, from the datamodule's
    ``model_kwargs()``; never valid or test ratings): which items someone chose to rate says
    something about them beyond the stars. It is kept as two buffers (``rated_indptr``,
    ``rated_items``, CSR by user) so a checkpoint carries it. ``y`` is its own layer group,
    ``implicit``, between ``embeddings`` and ``biases``. ``freq_wd`` holds the factors and biases
    as in DotBias, not ``y`` (``optim.wd`` or a stage's ``wd: {implicit: ...}`` does).
    """

    def __init__(self, n_users: int, n_items: int, n_factors: int = 50, y_range=(0.0, 5.5),
                 global_mean: float | None = None, sparse: bool = False, freq_wd: float = 0.0,
                 rated: RatedItems | None = None) -> None:
        super().__init__(n_users, n_items, n_factors, y_range, global_mean, sparse, freq_wd)
        if rated is None:
            raise ConfigError("model", "svdpp", "needs the training part's items per user: build it with the datamodule's model_kwargs()")
        self.register_buffer("rated_indptr", rated.indptr.clone())
        self.register_buffer("rated_items", rated.items.clone())
        self.implicit = nn.EmbeddingBag(n_items + 1, n_factors, mode="sum", sparse=sparse, padding_idx=UNKNOWN)
        trunc_normal_rows(self.implicit.weight)

    def implicit_sum(self, users: torch.Tensor) -> torch.Tensor:
        """``|N(u)|^-1/2 * sum_{j in N(u)} y_j`` for each user of the batch (zero when ``N(u)`` is empty)."""
        start, stop = self.rated_indptr[users], self.rated_indptr[users + 1]
        lengths = stop - start
        offsets = torch.cumsum(lengths, 0) - lengths
        flat = torch.repeat_interleave(start - offsets, lengths) + torch.arange(int(lengths.sum()), device=users.device)
        weights = torch.repeat_interleave(lengths.clamp(min=1).float().rsqrt(), lengths)
        return self.implicit(self.rated_items[flat], offsets, per_sample_weights=weights)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user = self.user_factors(users) + self.implicit_sum(users)
        dot = (user * self.item_factors(items)).sum(1)
        return dot + self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1)

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup("embeddings", (self.user_factors, self.item_factors)),
            LayerGroup("implicit", (self.implicit,)),
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
        freq_wd: float = 0.0,
        rated: RatedItems | None = None,
    ) -> None:
        """``rated`` (the training part's items per user, from ``model_kwargs()``) is read by SVD++ only."""
        super().__init__(y_range, global_mean, freq_wd)
        self.save_hyperparameters(ignore=["rated"])
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
