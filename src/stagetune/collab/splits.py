"""Raw rating tables and the three disjoint parts a run uses: train, valid (for choosing) and test.

Every split returns index arrays into the table. Valid is always carved from the
training part, so the test part is never seen before the end of a run:

* ``random``: one seeded shuffle; its first ``test_pct`` of all ratings is test, the next
  ``valid_pct`` of the remainder is valid.
* ``time``: each user's latest ``test_pct`` of ratings is test, then each user's latest
  ``valid_pct`` of what is left is valid (the future is never used to predict the past).
* ``u1``..``u5``, ``ua``, ``ub``: ML-100k's own folds as GroupLens's ``mku.sh`` builds them from
  ``u.data``'s line order (:func:`mku_fold`); valid is a seeded ``valid_pct`` of the base part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stagetune.errors import ConfigError

FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
SPLITS = ("random", "time", *FOLDS)
# allbut.pl's arguments in mku.sh: (first, last) rating of each user, in file order, that go to test.
ALLBUT = {"ua": (1, 10), "ub": (11, 20)}
ALLBUT_MAX_TEST = 100_000


@dataclass
class Ratings:
    """Raw ids, ratings and timestamps, one entry per line of a ratings file, in file order."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.ratings)

    def take(self, idx: np.ndarray) -> "Ratings":
        return Ratings(self.users[idx], self.items[idx], self.ratings[idx], self.timestamps[idx])


@dataclass(frozen=True)
class Parts:
    """Indices of the train, valid and test parts: disjoint, in file order (folds: in ``mku.sh``'s order)."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def _count(n: int, pct: float) -> int:
    return int(round(n * pct))


def split_random(n: int, test_pct: float, valid_pct: float, seed: int) -> Parts:
    """One seeded shuffle: test first (``test_pct`` of all), then valid (``valid_pct`` of the rest)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = _count(n, test_pct)
    n_valid = _count(n - n_test, valid_pct)
    return Parts(np.sort(order[n_test + n_valid :]), np.sort(order[n_test : n_test + n_valid]), np.sort(order[:n_test]))


def latest_per_user(r: Ratings, pct: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held): each user's latest ``pct`` of ratings (rounded per user; ties by file order) are held."""
    order = np.lexsort((np.arange(len(r)), r.timestamps, r.users))
    rank, size = user_groups(r.users[order])
    held = rank >= size - np.round(size * pct).astype(int)
    return np.sort(order[~held]), np.sort(order[held])


def user_groups(grouped_users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per entry of an array grouped by user: its rank 0, 1, ... in its group, and the group's size."""
    if not len(grouped_users):
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    starts = np.r_[0, np.flatnonzero(grouped_users[1:] != grouped_users[:-1]) + 1]
    counts = np.diff(np.r_[starts, len(grouped_users)])
    return np.arange(len(grouped_users)) - np.repeat(starts, counts), np.repeat(counts, counts)


def split_by_time(r: Ratings, test_pct: float, valid_pct: float) -> Parts:
    """Each user's latest ``test_pct`` is test; of the rest, each user's latest ``valid_pct`` is valid."""
    rest, test = latest_per_user(r, test_pct)
    train, valid = latest_per_user(r.take(rest), valid_pct)
    return Parts(rest[train], rest[valid], test)


def by_user_item(r: Ratings, idx: np.ndarray) -> np.ndarray:
    """``idx`` ordered as ``sort -t<TAB> -k 1,1n -k 2,2n`` orders the lines (user, then item)."""
    return idx[np.lexsort((r.items[idx], r.users[idx]))]


def mku_fold(r: Ratings, fold: str) -> tuple[np.ndarray, np.ndarray]:
    """(base, test) of ML-100k's ``fold``, as GroupLens's ``mku.sh`` writes them from ``u.data``.

    ``u<i>``: lines ``(i-1)*20000+1 .. i*20000`` of u.data are the test part, the other 80,000 the
    base (five blocks of consecutive lines; 20,000 each in ML-100k). ``ua``/``ub``: ``allbut.pl``
    walks u.data in order, counting each user's ratings; ratings number 1-10 (``ua``) or 11-20
    (``ub``) of each user go to test, at most 100,000 in all. Both parts are then sorted by user,
    then item, as ``mku.sh`` sorts its files.
    """
    n = len(r)
    lines = np.arange(n)
    if fold in ALLBUT:
        first, last = ALLBUT[fold]
        order = np.argsort(r.users, kind="stable")
        number = np.empty(n, dtype=int)
        number[order] = user_groups(r.users[order])[0] + 1
        wanted = (number >= first) & (number <= last)
        held = wanted & (np.cumsum(wanted) <= ALLBUT_MAX_TEST)
    else:
        k = FOLDS.index(fold)
        block = np.array_split(lines, 5)[k]
        held = np.zeros(n, dtype=bool)
        held[block] = True
    return by_user_item(r, lines[~held]), by_user_item(r, lines[held])


def carve_valid(n_base: int, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) positions within a base part of ``n_base`` ratings: a seeded ``valid_pct``."""
    order = np.random.default_rng(seed).permutation(n_base)
    n_valid = _count(n_base, valid_pct)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def check_fraction(key: str, value: float) -> None:
    """A share of ratings (``data.valid_pct``, ``data.test_pct``) must lie strictly between 0 and 1."""
    if not 0 < value < 1:
        raise ConfigError(key, value, "must be in (0, 1)")
