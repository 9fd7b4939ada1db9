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

``side`` (``model.side``, default ``[]``) names side features (:mod:`.side`: item genres and year,
user age, gender and occupation) whose embeddings are added to the user and item vectors (any
model) and, for the models with biases, a scalar per value added to ``b_u``/``b_i``. The side
factors are the ``side`` layer group (before ``biases``, or ``mlp``); the side biases train with
``biases``. ``freq_wd`` does not hold them (``optim.wd`` or a stage's ``wd: {side: ...}`` does).
"""

from __future__ import annotations

import math

import torch
import torchmetrics
from pytorch_lightning import Callback
from torch import nn

from stagetune.collab.data import UNKNOWN, RatedItems
from stagetune.collab.interpret import Interpretation
from stagetune.collab.side import SideFeature, SideTables, check_side
from stagetune.engine.groups import LayerGroup
from stagetune.engine.plan import StagedModule
from stagetune.errors import ConfigError


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


class SideEmbedding(nn.Module):
    """The sum over side features of an index's value embeddings, each feature's values weighted
    as its codes say (a multi-hot feature averages). The codes are buffers: a checkpoint carries them."""

    def __init__(self, features: list[SideFeature], dim: int, sparse: bool = False) -> None:
        super().__init__()
        self.tables = nn.ModuleDict({f.name: trunc_normal_embedding(f.n_values, dim, sparse=sparse) for f in features})
        for f in features:
            self.register_buffer(f"codes_{f.name}", f.codes.clone())
            self.register_buffer(f"weights_{f.name}", f.weights.clone())

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        total = 0
        for name, table in self.tables.items():
            codes, weights = getattr(self, f"codes_{name}")[index], getattr(self, f"weights_{name}")[index]
            total = total + (table(codes) * weights.unsqueeze(-1)).sum(-2)
        return total


def side_embeddings(side, side_tables: SideTables | None, of: str, dim: int, sparse: bool) -> SideEmbedding | None:
    """The user's or the item's (``of``) side embeddings of width ``dim`` that ``model.side`` names;
    None when it names none of them. A feature the data lacks is a ConfigError naming ``model.side``."""
    names = check_side(side)
    if names and side_tables is None:
        raise ConfigError("model.side", list(names), "this data has no side features (MovieLens-100k's item and user files carry them): use model.side=[]")
    missing = [n for n in names if n not in side_tables.features] if names else []
    if missing:
        raise ConfigError("model.side", list(names), f"this data lacks {', '.join(missing)}; it has {', '.join(side_tables.features) or 'none'}")
    features = side_tables.pick(names, of) if names else []
    return SideEmbedding(features, dim, sparse) if features else None


def plus_side(vectors: torch.Tensor, side: SideEmbedding | None, index: torch.Tensor) -> torch.Tensor:
    """``vectors`` plus the side embeddings of ``index`` (as is without side features)."""
    return vectors if side is None else vectors + side(index)


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

    def add_side(self, side, side_tables: SideTables | None, user_dim: int, item_dim: int, sparse: bool, biases: bool) -> None:
        """Side embeddings for ``model.side`` added to the user and item vectors (``user_side``,
        ``item_side``) and, with ``biases``, to the biases (``user_side_bias``, ``item_side_bias``)."""
        self.user_side = side_embeddings(side, side_tables, "user", user_dim, sparse)
        self.item_side = side_embeddings(side, side_tables, "item", item_dim, sparse)
        self.user_side_bias = side_embeddings(side, side_tables, "user", 1, sparse) if biases else None
        self.item_side_bias = side_embeddings(side, side_tables, "item", 1, sparse) if biases else None

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return plus_side(self.user_factors(users), self.user_side, users)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return plus_side(self.item_factors(items), self.item_side, items)

    def all_item_vectors(self) -> torch.Tensor:
        """Every item index's vector as the model uses it (its factors plus its side embeddings)."""
        return self.item_vectors(torch.arange(self.item_factors.num_embeddings, device=self.offset.device))

    def all_item_biases(self) -> torch.Tensor | None:
        """Every item index's bias as the model uses it, or None for a model without biases."""
        if getattr(self, "item_bias", None) is None:
            return None
        items = torch.arange(self.item_bias.num_embeddings, device=self.offset.device)
        return plus_side(self.item_bias(items), self.item_side_bias, items).squeeze(1)

    def side_group(self) -> list[LayerGroup]:
        """The ``side`` layer group (the side factors), when the model has side features."""
        modules = tuple(m for m in (self.user_side, self.item_side) if m is not None)
        return [LayerGroup("side", modules)] if modules else []

    def side_biases(self) -> tuple[nn.Module, ...]:
        """The side biases, trained and decayed with the ``biases`` group."""
        return tuple(m for m in (self.user_side_bias, self.item_side_bias) if m is not None)

    def biases(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``b_u + b_i`` plus the side biases."""
        user = plus_side(self.user_bias(users), self.user_side_bias, users)
        item = plus_side(self.item_bias(items), self.item_side_bias, items)
        return (user + item).squeeze(1)

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

    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_factors: int = 50,
        y_range=(0.0, 5.5),
        global_mean: float | None = None,
        sparse: bool = False,
        freq_wd: float = 0.0,
        rated: RatedItems | None = None,
        side=(),
        side_tables: SideTables | None = None,
    ) -> None:
        """``rated`` (the training part's items per user, from ``model_kwargs()``) is read by SVD++ only;
        ``side`` (``model.side``) names the side features taken from ``side_tables`` (also from ``model_kwargs()``)."""
        super().__init__(y_range, global_mean, freq_wd)
        if n_factors < 1:
            raise ConfigError("model.n_factors", n_factors, "must be >= 1 (the width of the user and item factors)")
        self.save_hyperparameters(ignore=["rated", "side_tables"])
        self.user_factors = trunc_normal_embedding(n_users, n_factors, sparse=sparse)
        self.item_factors = trunc_normal_embedding(n_items, n_factors, sparse=sparse)
        self.user_bias = trunc_normal_embedding(n_users, 1, sparse=sparse)
        self.item_bias = trunc_normal_embedding(n_items, 1, sparse=sparse)
        self.add_side(side, side_tables, n_factors, n_factors, sparse, biases=True)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user_vectors(users) * self.item_vectors(items)).sum(1)
        return dot + self.biases(users, items)

    def penalised(self) -> tuple[tuple[nn.Embedding, ...], tuple[nn.Embedding, ...]]:
        return (self.user_factors, self.user_bias), (self.item_factors, self.item_bias)

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup("embeddings", (self.user_factors, self.item_factors)),
            *self.side_group(),
            LayerGroup("biases", (self.user_bias, self.item_bias, *self.side_biases())),
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

    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_factors: int = 50,
        y_range=(0.0, 5.5),
        global_mean: float | None = None,
        sparse: bool = False,
        freq_wd: float = 0.0,
        rated: RatedItems | None = None,
        side=(),
        side_tables: SideTables | None = None,
    ) -> None:
        super().__init__(n_users, n_items, n_factors, y_range, global_mean, sparse, freq_wd, side=side, side_tables=side_tables)
        if rated is None:
            raise ConfigError("model", "svdpp", "needs the training part's items per user: build it with the datamodule's model_kwargs()")
        self.register_buffer("rated_indptr", rated.indptr.clone())
        self.register_buffer("rated_items", rated.items.clone())
        self.implicit = nn.EmbeddingBag(n_items + 1, n_factors, mode="sum", sparse=sparse, padding_idx=UNKNOWN)
        trunc_normal_rows(self.implicit.weight)

    def implicit_sum(self, users: torch.Tensor) -> torch.Tensor:
        """``|N(u)|^-1/2 * sum_{j in N(u)} y_j`` for each user of the batch (zero when ``N(u)`` is empty).

        One weighted bag per distinct user of the batch, then gathered per rating: a batch of 1,024
        ML-100k ratings names about 500 users whose ``N(u)`` hold a third of the items its ratings'
        would (active users rate more and appear more often), forward and backward alike.
        """
        distinct, of_rating = torch.unique(users, return_inverse=True)
        start, stop = self.rated_indptr[distinct], self.rated_indptr[distinct + 1]
        lengths = stop - start
        offsets = torch.cumsum(lengths, 0) - lengths
        flat = torch.repeat_interleave(start - offsets, lengths) + torch.arange(int(lengths.sum()), device=users.device)
        weights = torch.repeat_interleave(lengths.clamp(min=1).float().rsqrt(), lengths)
        return self.implicit(self.rated_items[flat], offsets, per_sample_weights=weights)[of_rating]

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user = self.user_vectors(users) + self.implicit_sum(users)
        dot = (user * self.item_vectors(items)).sum(1)
        return dot + self.biases(users, items)

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup("embeddings", (self.user_factors, self.item_factors)),
            LayerGroup("implicit", (self.implicit,)),
            *self.side_group(),
            LayerGroup("biases", (self.user_bias, self.item_bias, *self.side_biases())),
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
        side=(),
        side_tables: SideTables | None = None,
    ) -> None:
        """``rated`` (the training part's items per user, from ``model_kwargs()``) is read by SVD++ only;
        ``side`` (``model.side``) names the side features taken from ``side_tables`` (also from ``model_kwargs()``)."""
        super().__init__(y_range, global_mean, freq_wd)
        self.save_hyperparameters(ignore=["rated", "side_tables"])
        sizes = [int(s) for s in layers]
        if not sizes or any(s < 1 for s in sizes):
            raise ConfigError("model.layers", list(layers), "one or more hidden sizes, each >= 1")
        for key, width in (("model.user_width", user_width), ("model.item_width", item_width)):
            if width is not None and width < 1:
                raise ConfigError(key, width, "must be >= 1, or null for fastai's rule")
        self.user_factors = trunc_normal_embedding(n_users, user_width or embedding_width(n_users + 1), sparse=sparse)
        self.item_factors = trunc_normal_embedding(n_items, item_width or embedding_width(n_items + 1), sparse=sparse)
        self.add_side(side, side_tables, self.user_factors.embedding_dim, self.item_factors.embedding_dim, sparse, biases=False)
        blocks: list[nn.Module] = []
        width = self.user_factors.embedding_dim + self.item_factors.embedding_dim
        for size in sizes:
            blocks += [nn.Linear(width, size, bias=False), nn.ReLU(), nn.BatchNorm1d(size)]
            width = size
        blocks.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*blocks)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.user_vectors(users), self.item_vectors(items)], 1)).squeeze(1)

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup("embeddings", (self.user_factors, self.item_factors)),
            *self.side_group(),
            LayerGroup("mlp", (self.mlp,)),
        ]
