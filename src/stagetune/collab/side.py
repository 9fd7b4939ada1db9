"""Side features of users and items (MovieLens-100k's item genres and year, user age, gender and
occupation), read from the data's files and encoded per user or item index.

Every feature is categorical: a value is a code ``1..n_values`` (0: none). Release years and ages
are bucketed (``YEAR_EDGES``, ``AGE_EDGES``: a value ``v`` falls in bucket ``1 + #edges <= v``);
genres are multi-hot, and a film's genre codes carry weight ``1/number of its genres`` so its genre
vector is the mean of its genres' embeddings. Index 0 (an id unknown to training) and an id the side
files do not list have no codes: their side vectors are zero.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from stagetune.errors import ConfigError, DataError

FEATURES = {"genres": "item", "year": "item", "age": "user", "gender": "user", "occupation": "user"}
GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)  # u.item's 19 genre columns, in their order
YEAR_EDGES = (1940, 1950, 1960, 1970, 1980, 1990, 1993, 1994, 1995, 1996, 1997, 1998)  # decades, then the 1990s by year
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: under 18, 18-24, ..., 56 and over


class SideFeature:
    """One feature per index: ``codes`` ``(n_index + 1, width)`` into ``1..n_values`` (0: none) and
    ``weights`` the same shape (``1/k`` for each of a row's ``k`` codes). A plain class: Hydra passes
    it through ``instantiate`` as is."""

    def __init__(self, name: str, n_values: int, codes: torch.Tensor, weights: torch.Tensor) -> None:
        self.name, self.n_values, self.codes, self.weights = name, n_values, codes, weights

    @classmethod
    def of(cls, name: str, n_values: int, rows: Sequence[Sequence[int]]) -> "SideFeature":
        """From each index's codes (``rows[0]``, the unknown index, is ignored and left empty)."""
        width = max([len(r) for r in rows[1:]] + [1])
        codes = torch.zeros(len(rows), width, dtype=torch.long)
        weights = torch.zeros(len(rows), width)
        for k, row in enumerate(rows[1:], 1):
            codes[k, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            weights[k, : len(row)] = 1.0 / len(row) if row else 0.0
        return cls(name, n_values, codes, weights)


class SideTables:
    """The side features a dataset has, by name (see ``FEATURES`` for whether each is a user's or an
    item's), read from the files only when a model asks for them: a run without side features never
    opens (nor fails on) the side files."""

    def __init__(self, load: Callable[[], dict[str, SideFeature]]) -> None:
        self._load, self._features = load, None

    @property
    def features(self) -> dict[str, SideFeature]:
        if self._features is None:
            self._features = self._load()
        return self._features

    def pick(self, names: Sequence[str], of: str) -> list[SideFeature]:
        """The user's or the item's features among ``names``, in ``names``' order."""
        return [self.features[n] for n in names if FEATURES[n] == of]


class RawSide:
    """A feature's value labels (code k is ``labels[k - 1]``) and each raw id's codes, as read from a file."""

    def __init__(self, labels: Sequence[str], codes: dict[int, tuple[int, ...]]) -> None:
        self.labels, self.codes = list(labels), codes

    def encoded(self, name: str, ids: np.ndarray) -> SideFeature:
        """Per index ``k + 1`` the codes of raw id ``ids[k]`` (the training vocabulary's order)."""
        return SideFeature.of(name, len(self.labels), [()] + [self.codes.get(int(i), ()) for i in ids])


def check_side(side) -> tuple[str, ...]:
    """``model.side`` as a tuple of distinct feature names, or a ConfigError naming the allowed ones."""
    allowed = f"a list of distinct side features from {', '.join(FEATURES)} (e.g. [genres, age]; [] for none)"
    if isinstance(side, (str, bytes)) or not isinstance(side, Sequence):
        raise ConfigError("model.side", side, allowed)
    names = tuple(side)
    if any(n not in FEATURES for n in names) or len(set(names)) != len(names):
        raise ConfigError("model.side", list(side), allowed)
    return names


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """``<e0``, ``e0-e1``, ..., ``>=eN``: a label per bucket of ``bucket(v, edges)``."""
    return [f"<{edges[0]}"] + [f"{a}-{b - 1}" if b - 1 > a else str(a) for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]


def bucket(value: int, edges: Sequence[int]) -> int:
    """The code ``1..len(edges) + 1`` of the bucket ``value`` falls in."""
    return bisect_right(edges, value) + 1


def categories(values: dict[int, str]) -> RawSide:
    """Codes for a plain categorical feature, its labels sorted."""
    labels = sorted(set(values.values()))
    return RawSide(labels, {i: (labels.index(v) + 1,) for i, v in values.items()})


def item_side(genres: dict[int, list[str]], years: dict[int, str], where: str) -> dict[str, RawSide]:
    """``genres`` and ``year`` from each item's genre names and release year (a year that is not a number: none)."""
    for item, names in genres.items():
        unknown = [n for n in names if n not in GENRES]
        if unknown:
            raise DataError(f"{where}: item {item} has genre {unknown[0]!r}; known genres: {', '.join(GENRES)}")
    return {
        "genres": RawSide(GENRES, {i: tuple(sorted(GENRES.index(n) + 1 for n in set(names))) for i, names in genres.items()}),
        "year": RawSide(bucket_labels(YEAR_EDGES), {i: (bucket(int(y), YEAR_EDGES),) for i, y in years.items() if y.isdigit()}),
    }


def user_side(ages: dict[int, str], genders: dict[int, str], occupations: dict[int, str], where: str) -> dict[str, RawSide]:
    """``age`` (bucketed), ``gender`` and ``occupation`` from each user's row."""
    bad = next((u for u, a in ages.items() if not a.isdigit()), None)
    if bad is not None:
        raise DataError(f"{where}: user {bad} has age {ages[bad]!r}; expected a whole number")
    return {
        "age": RawSide(bucket_labels(AGE_EDGES), {u: (bucket(int(a), AGE_EDGES),) for u, a in ages.items()}),
        "gender": categories(genders),
        "occupation": categories(occupations),
    }


def rows(path: Path, separator: str, n_fields: int, encoding: str, header: bool) -> list[list[str]]:
    """The lines of ``path`` split into fields; a short line stops at ``file:line``."""
    out = []
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, 1):
            if (header and lineno == 1) or not line.strip():
                continue
            fields = line.rstrip("\r\n").split(separator)
            if len(fields) < n_fields or not fields[0].isdigit():
                raise DataError(f"{path}:{lineno}: expected {n_fields} {separator!r}-separated fields starting with an id, got {line.strip()[:80]!r}")
            out.append(fields)
    return out


def read_recbole(items: Path, users: Path) -> dict[str, RawSide]:
    """recbole's ``ml-100k.item`` (``item_id, title, release_year, class``) and ``ml-100k.user``
    (``user_id, age, gender, occupation, zip_code``), tab-separated with a header."""
    item_rows = rows(items, "\t", 4, "utf-8", header=True)
    user_rows = rows(users, "\t", 4, "utf-8", header=True)
    return {
        **item_side({int(r[0]): r[3].split() for r in item_rows}, {int(r[0]): r[2] for r in item_rows}, str(items)),
        **user_side(*({int(r[0]): r[k] for r in user_rows} for k in (1, 2, 3)), str(users)),
    }


def read_grouplens(folder: Path) -> dict[str, RawSide]:
    """GroupLens's ``u.item`` (``id|title|release date|video date|url|`` and 19 genre flags, latin-1)
    and ``u.user`` (``id|age|gender|occupation|zip``); each file's features only when it is there."""
    out: dict[str, RawSide] = {}
    items, users = folder / "u.item", folder / "u.user"
    if items.is_file():
        item_rows = rows(items, "|", 5 + len(GENRES), "latin-1", header=False)
        genres = {int(r[0]): [g for g, flag in zip(GENRES, r[5 : 5 + len(GENRES)]) if flag.strip() == "1"] for r in item_rows}
        out |= item_side(genres, {int(r[0]): r[2].strip()[-4:] for r in item_rows}, str(items))
    if users.is_file():
        user_rows = rows(users, "|", 4, "latin-1", header=False)
        out |= user_side(*({int(r[0]): r[k] for r in user_rows} for k in (1, 2, 3)), str(users))
    return out


def tables(read: Callable[[], dict[str, RawSide]], user_ids: np.ndarray, item_ids: np.ndarray) -> SideTables:
    """The features ``read`` returns, encoded over the training vocabulary (``user_ids``/``item_ids``:
    the raw id of index k+1 at position k), once a model asks for them."""

    def encode() -> dict[str, SideFeature]:
        return {name: r.encoded(name, user_ids if FEATURES[name] == "user" else item_ids) for name, r in read().items()}

    return SideTables(encode)
