"""Ratings as index tensors, their batching, and a synthetic generator with known ground truth.

Users and items are numbered from 1; index 0 stands for "unknown" (an id never seen in training)
and the models keep its factors and biases at zero, so an unseen id is predicted from whatever
biases are known, never an index error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from stagetune.collab.side import RawSide, tables
from stagetune.collab.splits import Parts, Ratings, check_fraction, split_random
from stagetune.engine.loaders import epoch_loader, eval_loader
from stagetune.errors import ConfigError, DataError, StagetuneError

UNKNOWN = 0
LISTED_CELLS = 2**25  # up to this many (user, item) cells, synthetic data lists the free ones (256 MB)


class RatedItems:
    """The items each user rated in the training part, CSR by user index: user ``u`` rated
    ``items[indptr[u]:indptr[u + 1]]`` (``indptr`` has ``n_users + 2`` entries; index 0, unknown,
    rated nothing). A plain class, not a dataclass: Hydra passes it through ``instantiate`` as is."""

    def __init__(self, indptr: torch.Tensor, items: torch.Tensor) -> None:
        self.indptr, self.items = indptr, items

    @classmethod
    def of(cls, ratings: "RatingsTensor", n_users: int) -> "RatedItems":
        """From a part's ratings (the training part: valid and test never enter ``N(u)``)."""
        order = torch.argsort(ratings.users, stable=True)
        counts = torch.bincount(ratings.users, minlength=n_users + 1)
        indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
        return cls(indptr, ratings.items[order])


class RatingsTensor(Dataset):
    """Users, items and ratings as three tensors; a whole batch is one tensor indexing operation."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        self.users, self.items, self.ratings = users, items, ratings

    def __len__(self) -> int:
        return len(self.ratings)

    def __getitem__(self, index):
        """``index`` is a whole batch's list of positions: one gather per batch, not one per row."""
        index = torch.as_tensor(index, dtype=torch.long)
        return self.users[index], self.items[index], self.ratings[index]


def batch_loader(ds: RatingsTensor, batch_size: int, shuffle: bool) -> DataLoader:
    """Whole batches of this rank's shard, in an order fixed by (seed, epoch): see ``loaders``."""
    return epoch_loader(ds, batch_size, shuffle=shuffle, whole_batches=True)


def ratings_tensor(users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> RatingsTensor:
    return RatingsTensor(
        torch.as_tensor(users, dtype=torch.long),
        torch.as_tensor(items, dtype=torch.long),
        torch.as_tensor(ratings, dtype=torch.float32),
    )


class Vocabulary:
    """Raw ids seen in training -> indices 1..n; anything else -> 0 (unknown). Ids of any one type: integers or text."""

    def __init__(self, train_ids: np.ndarray) -> None:
        self.ids = np.unique(train_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.ids, raw)
        known = (pos < len(self.ids)) & (self.ids[np.minimum(pos, len(self.ids) - 1)] == raw)
        return np.where(known, pos + 1, UNKNOWN)


class RatingsDataModule(pl.LightningDataModule):
    """What every ratings source shares: the three parts, loaders, model sizes, titles, counts.

    Subclasses fill ``train_set``/``val_set``/``test_set`` (indices 1..n, 0 = unknown),
    ``n_users``, ``n_items``, ``user_ids``/``item_ids`` (the raw id of index k+1 at position k),
    ``item_titles`` (index -> title, or None) and ``unseen`` (per evaluated part, counts of ratings
    whose user or item never appears in training) in :meth:`load`, and ``read_side`` (a function
    giving feature name -> :class:`~stagetune.collab.side.RawSide`, by raw id) when the data has side
    features. Valid chooses the checkpoint;
    test is read once, at the end of a run.
    """

    has_test = True

    def __init__(self, batch_size: int, valid_batch_size: int = 4096) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.valid_batch_size = valid_batch_size
        self.train_set: RatingsTensor | None = None
        self.val_set: RatingsTensor | None = None
        self.test_set: RatingsTensor | None = None
        self.n_users = self.n_items = 0
        self.item_titles: list[str] | None = None
        self.user_ids = self.item_ids = np.zeros(0, dtype=np.int64)
        self.unseen = {part: {"users": 0, "items": 0, "ratings": 0} for part in ("valid", "test")}
        self.read_side: Callable[[], dict[str, RawSide]] | None = None
        self.source = ""  # where the ratings came from, as errors and the record name it (set by load)

    def load(self) -> None:
        raise NotImplementedError

    def index_parts(self, table: Ratings, parts: Parts) -> None:
        """Index users and items from the training part (1..n), encode the three parts, count unseen ids."""
        if len(parts.train) == 0:
            raise DataError(
                f"{self.source or 'the ratings'}: the training split is empty ({len(table)} rating(s): {len(parts.valid)} valid, "
                f"{len(parts.test)} test); give more ratings, or lower data.valid_pct and data.test_pct"
            )
        train = table.take(parts.train)
        users, items = Vocabulary(train.users), Vocabulary(train.items)
        self.n_users, self.n_items = len(users), len(items)
        self.user_ids, self.item_ids = users.ids, items.ids
        sets = []
        for part, idx in (("train", parts.train), ("valid", parts.valid), ("test", parts.test)):
            r = table.take(idx)
            u, i = users.encode(r.users), items.encode(r.items)
            if part != "train":
                self.unseen[part] = unseen_counts(r.users, r.items, u == UNKNOWN, i == UNKNOWN)
            sets.append(ratings_tensor(u, i, r.ratings))
        self.train_set, self.val_set, self.test_set = sets

    def state_dict(self) -> dict:
        """The id maps, saved in every checkpoint (Lightning's hook): the model's index k+1 is ``user_ids[k]``."""
        self.setup()
        return {"user_ids": self.user_ids.tolist(), "item_ids": self.item_ids.tolist()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Refuse a checkpoint whose id maps differ from the data's: its indices would name other users and items."""
        self.setup()
        for kind, ids in (("user", self.user_ids), ("item", self.item_ids)):
            saved = state_dict.get(f"{kind}_ids")
            if saved is not None and saved != ids.tolist():
                raise DataError(
                    f"{getattr(self, 'source', '') or 'the data'}: its {kind} ids are no longer those the checkpoint was trained on "
                    f"({len(saved)} saved, {len(ids)} now): use the ratings file the run trained on"
                )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.load()

    @property
    def global_mean(self) -> float:
        return float(self.train_set.ratings.mean())

    def item_counts(self) -> np.ndarray:
        """Training ratings per item index (index 0, unknown, counts nothing)."""
        return np.bincount(self.train_set.items.numpy(), minlength=self.n_items + 1)

    def item_names(self) -> list[str]:
        """A label per item index: its title when known, else its id (index 0 is "unknown")."""
        if self.item_titles is not None:
            return self.item_titles
        return ["unknown"] + [f"item {k}" for k in range(1, self.n_items + 1)]

    def index_of(self, kind: str, raw: int | str) -> int:
        """The index (1..n) of a raw user or item id as the data wrote it (``"42"`` is 42 for integer ids); 0 when training never saw it."""
        ids = self.user_ids if kind == "user" else self.item_ids
        if ids.dtype.kind in "iu":
            try:
                raw = int(raw)
            except ValueError:
                return UNKNOWN
        pos = np.flatnonzero(ids == (raw if ids.dtype.kind in "iu" else str(raw)))
        return int(pos[0]) + 1 if len(pos) else UNKNOWN

    def trained_index(self, kind: str, raw: int | str) -> int:
        """The index of a raw user or item id that training saw; else one line saying it has no training ratings."""
        index = self.index_of(kind, raw)
        seen = self.train_set.users if kind == "user" else self.train_set.items
        if index == UNKNOWN or not bool((seen == index).any()):
            raise StagetuneError(f"unknown {kind} {raw}: it has no ratings in the run's training data")
        return index

    def model_kwargs(self) -> dict:
        self.setup()
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "global_mean": self.global_mean,
            "rated": RatedItems.of(self.train_set, self.n_users),
            "side_tables": tables(self.read_side, self.user_ids, self.item_ids) if self.read_side else None,
        }

    def summary(self) -> dict:
        self.setup()
        out = {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_train": len(self.train_set),
            "n_valid": len(self.val_set),
            "n_test": len(self.test_set),
            "global_mean": round(self.global_mean, 4),
        }
        for part, counts in self.unseen.items():
            out |= {
                f"{part}_unseen_users": counts["users"],
                f"{part}_unseen_items": counts["items"],
                f"{part}_ratings_with_unseen_id": counts["ratings"],
            }
        return out

    def with_valid_in_train(self) -> None:
        """Give valid back to training, for a refit (:mod:`stagetune.runs.refit`) after valid has chosen:
        the training part becomes train + valid (ids keep the indices training gave them; one seen only
        in valid stays unknown). Valid stays as it was, and is no longer held out."""
        self.setup()
        t, v = self.train_set, self.val_set
        self.train_set = RatingsTensor(torch.cat([t.users, v.users]), torch.cat([t.items, v.items]), torch.cat([t.ratings, v.ratings]))

    def parts(self) -> tuple[RatingsTensor, RatingsTensor, RatingsTensor]:
        """Train, valid and test: every rating the data holds."""
        self.setup()
        return self.train_set, self.val_set, self.test_set

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.val_set, self.valid_batch_size, whole_batches=True)

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self.test_set, self.valid_batch_size, whole_batches=True)

    def train_eval_dataloader(self) -> DataLoader:
        """The training part in order, for the chosen model's train RMSE in eval mode (an honest
        fit measure: no dropout or BatchNorm batch statistics, unlike the epoch's running loss)."""
        return eval_loader(self.train_set, self.valid_batch_size, whole_batches=True)


def unseen_counts(users: np.ndarray, items: np.ndarray, new_user: np.ndarray, new_item: np.ndarray) -> dict[str, int]:
    """Distinct users and items of an evaluated part that training never saw, and the ratings they touch."""
    return {
        "users": int(np.unique(users[new_user]).size),
        "items": int(np.unique(items[new_item]).size),
        "ratings": int((new_user | new_item).sum()),
    }


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by sorting: numpy's hash-based unique takes ~10x longer on 30M keys."""
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered


class SyntheticRatings(RatingsDataModule):
    """Ratings drawn from a known low-rank model with biases, shaped like MovieLens 100k.

    ``truth = clip(mean + b_u + b_i + u . v, 1, 5)`` and ``rating = clip(truth + noise, 1, 5)``,
    optionally rounded to whole stars. ``factor_scale`` is the standard deviation of the
    interaction ``u . v`` (each factor has std ``sqrt(factor_scale) / rank**0.25``), so it compares
    directly with the bias scales and the noise. Items are picked with Zipf popularity and users
    with Zipf activity (long tails, as in MovieLens). ``test_pct`` of the ratings are test and
    ``valid_pct`` of the rest valid (:func:`~stagetune.collab.splits.split_random`, seeded from
    ``seed``). ``noise_floor`` (``test_noise_floor``) is the RMSE of the true model on valid
    (test): the reference a fitted model is measured against.
    """

    def __init__(
        self,
        n_users: int = 943,
        n_items: int = 1682,
        n_ratings: int = 100_000,
        rank: int = 4,
        factor_scale: float = 0.3,
        user_bias_scale: float = 0.45,
        item_bias_scale: float = 0.55,
        mean: float = 3.5,
        noise: float = 0.85,
        popularity_exponent: float = 0.8,
        activity_exponent: float = 0.6,
        round_stars: bool = True,
        test_pct: float = 0.2,
        valid_pct: float = 0.1,
        batch_size: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size)
        self.save_hyperparameters()
        self.noise_floor = self.test_noise_floor = math.nan

    def load(self) -> None:
        h = self.hparams
        check_fraction("data.test_pct", h.test_pct)
        check_fraction("data.valid_pct", h.valid_pct)
        rng = np.random.default_rng(h.seed)
        factor_std = math.sqrt(h.factor_scale) / h.rank**0.25
        users_f = rng.normal(0, factor_std, (h.n_users, h.rank))
        items_f = rng.normal(0, factor_std, (h.n_items, h.rank))
        b_u = rng.normal(0, h.user_bias_scale, h.n_users)
        b_i = rng.normal(0, h.item_bias_scale, h.n_items)
        u, i = self._pairs(rng)
        truth = np.clip(h.mean + b_u[u] + b_i[i] + (users_f[u] * items_f[i]).sum(1), 1, 5)
        ratings = np.clip(truth + rng.normal(0, h.noise, len(u)), 1, 5)
        if h.round_stars:
            ratings = np.round(ratings)
        parts = split_random(len(u), h.test_pct, h.valid_pct, int(rng.integers(2**31)))
        self.noise_floor = float(np.sqrt(np.mean((ratings[parts.valid] - truth[parts.valid]) ** 2)))
        self.test_noise_floor = float(np.sqrt(np.mean((ratings[parts.test] - truth[parts.test]) ** 2)))
        self.n_users, self.n_items = h.n_users, h.n_items
        self.user_ids, self.item_ids = np.arange(h.n_users), np.arange(h.n_items)
        seen_u, seen_i = np.zeros(h.n_users, bool), np.zeros(h.n_items, bool)
        seen_u[u[parts.train]], seen_i[i[parts.train]] = True, True
        for part, idx in (("valid", parts.valid), ("test", parts.test)):
            self.unseen[part] = unseen_counts(u[idx], i[idx], ~seen_u[u[idx]], ~seen_i[i[idx]])
        users, items = np.where(seen_u[u], u + 1, UNKNOWN), np.where(seen_i[i], i + 1, UNKNOWN)
        self.train_set, self.val_set, self.test_set = (ratings_tensor(users[idx], items[idx], ratings[idx]) for idx in (parts.train, parts.valid, parts.test))

    def _pairs(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n_ratings`` distinct (user, item) cells: Zipf-weighted draws on both sides, ranks
        given to ids at random; when the draws repeat too often to fill ``n_ratings`` (dense
        settings), the rest are drawn uniformly from the cells not yet taken (listed when there
        are at most ``LISTED_CELLS`` cells, otherwise drawn at random until enough are new).
        """
        h = self.hparams
        cells = h.n_users * h.n_items
        if not 0 < h.n_ratings <= cells:
            raise ConfigError("data.n_ratings", h.n_ratings, f"between 1 and n_users * n_items = {cells}")

        def zipf(n: int, exponent: float) -> np.ndarray:
            p = 1.0 / np.arange(1, n + 1) ** exponent
            return rng.permutation(n)[rng.choice(n, 3 * h.n_ratings, p=p / p.sum())]

        keys = sorted_unique(zipf(h.n_users, h.activity_exponent) * h.n_items + zipf(h.n_items, h.popularity_exponent))
        if len(keys) < h.n_ratings and cells <= LISTED_CELLS:
            rest = np.setdiff1d(np.arange(cells), keys, assume_unique=True)
            keys = np.r_[keys, rng.choice(rest, h.n_ratings - len(keys), replace=False)]
        while len(keys) < h.n_ratings:  # too many cells to list (MovieLens-10M-sized): draw and keep new ones
            drawn = rng.integers(0, cells, 2 * (h.n_ratings - len(keys)))
            fresh = np.setdiff1d(sorted_unique(drawn), keys, assume_unique=True)
            keys = np.r_[keys, fresh[rng.permutation(len(fresh))[: h.n_ratings - len(keys)]]]
        keys = keys[rng.permutation(len(keys))[: h.n_ratings]]
        return keys // h.n_items, keys % h.n_items

    def summary(self) -> dict:
        return {**super().summary(), "noise_floor": round(self.noise_floor, 4), "test_noise_floor": round(self.test_noise_floor, 4)}
