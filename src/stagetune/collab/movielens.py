"""MovieLens ratings from GroupLens's own files, split three ways, optionally downloaded.

Read from ``data.path`` (or its ``ml-*`` subfolder, where the archive unpacks):

* ml-100k ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``; titles from ``u.item``
  (``id|title|...``, latin-1); its own folds ``u1``..``u5``, ``ua``, ``ub`` (``.base``/``.test``).
* ml-1m ``ratings.dat``: ``user::item::rating::timestamp``; titles from ``movies.dat`` (latin-1).
* ml-latest-small / ml-25m ``ratings.csv``: header ``userId,movieId,rating,timestamp``; titles
  from ``movies.csv`` (UTF-8, quoted CSV).

Ids are indexed from the training split only (1..n); an id that appears only in validation maps
to 0, "unknown", and is counted in the run's summary.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stagetune.collab.data import UNKNOWN, RatingsDataModule, ratings_tensor
from stagetune.collab.models import check_y_range
from stagetune.errors import ConfigError, DataError

BASE_URL = "https://files.grouplens.org/datasets/movielens"
# Published MD5s of the archives that do not change; ml-latest-small is re-released, so its MD5 is
# read from the .md5 file GroupLens publishes next to it.
ARCHIVE_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-latest-small": None,
}
FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
SPLITS = ("random", "time", *FOLDS)


@dataclass(frozen=True)
class RatingsFormat:
    """How one MovieLens release writes its ratings and titles."""

    ratings: str
    separator: str
    header: bool
    titles: str
    titles_encoding: str


FORMATS = (
    RatingsFormat("u.data", "\t", False, "u.item", "latin-1"),
    RatingsFormat("ratings.dat", "::", False, "movies.dat", "latin-1"),
    RatingsFormat("ratings.csv", ",", True, "movies.csv", "utf-8"),
)


@dataclass
class Ratings:
    """Raw ids, ratings and timestamps, one entry per line of a ratings file."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray

    def take(self, idx: np.ndarray) -> "Ratings":
        return Ratings(self.users[idx], self.items[idx], self.ratings[idx], self.timestamps[idx])


def read_ratings(path: Path, separator: str, header: bool, y_range: tuple[float, float]) -> Ratings:
    """Parse a ratings file; a malformed line or a rating outside ``y_range`` stops at ``file:line``."""
    sep_name = {"\t": "<TAB>", "::": "::", ",": ","}[separator]
    expected = sep_name.join(["USER", "ITEM", "RATING", "TIMESTAMP"])
    lo, hi = y_range
    users, items, ratings, stamps = [], [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if (header and lineno == 1) or not line.strip():
                continue
            fields = line.rstrip("\r\n").split(separator)
            try:
                if len(fields) != 4:
                    raise ValueError
                u, i, r, t = int(fields[0]), int(fields[1]), float(fields[2]), int(float(fields[3]))
            except ValueError:
                got = line.strip()[:80]
                raise DataError(f"{path}:{lineno}: expected {expected} (integer ids, a number, an integer), got {got!r}") from None
            if not lo <= r <= hi:
                raise DataError(f"{path}:{lineno}: rating {r:g} is outside model.y_range [{lo:g}, {hi:g}]")
            users.append(u), items.append(i), ratings.append(r), stamps.append(t)
    if not ratings:
        raise DataError(f"{path}: no ratings in the file")
    return Ratings(np.array(users), np.array(items), np.array(ratings, dtype=np.float32), np.array(stamps))


def read_titles(path: Path, fmt: RatingsFormat) -> dict[int, str]:
    """Item id -> title, from ``u.item``, ``movies.dat`` or ``movies.csv``; empty when absent."""
    if not path.exists():
        return {}
    titles: dict[int, str] = {}
    with open(path, encoding=fmt.titles_encoding, newline="") as f:
        if fmt.titles == "movies.csv":
            rows = csv.reader(f)
            next(rows, None)
        else:
            rows = (line.rstrip("\r\n").split("|" if fmt.titles == "u.item" else "::") for line in f)
        for lineno, row in enumerate(rows, 1):
            if len(row) < 2 or not row[0].strip().isdigit():
                if not "".join(row).strip():
                    continue
                raise DataError(f"{path}:{lineno}: expected ITEM_ID and TITLE as the first two fields, got {row[:2]}")
            titles[int(row[0])] = row[1]
    return titles


def find_format(path: Path) -> tuple[Path, RatingsFormat] | None:
    """The folder (``path`` or one ``ml-*`` folder in it) holding a ratings file, and its format."""
    for folder in (path, *sorted(p for p in path.glob("ml-*") if p.is_dir())):
        for fmt in FORMATS:
            if (folder / fmt.ratings).exists():
                return folder, fmt
    return None


def download(name: str, path: Path) -> None:
    """Fetch GroupLens's archive ``name``, check its MD5, unpack it into ``path``."""
    url = f"{BASE_URL}/{name}.zip"
    hint = f"put the unpacked {name} files in {path} (get {url} and unzip it there)"
    try:
        expected = ARCHIVE_MD5[name] or published_md5(url)
        archive = _fetch(url)
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"cannot download {url} ({getattr(err, 'reason', err)}); {hint}") from None
    digest = hashlib.md5(archive).hexdigest()
    if digest != expected:
        raise DataError(f"{url} has MD5 {digest}, expected {expected}; not unpacked. {hint}")
    path.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        z.extractall(path)


def published_md5(url: str) -> str:
    """The MD5 in GroupLens's ``<archive>.md5`` file (``MD5 (name.zip) = HEX`` or ``HEX  name.zip``)."""
    text = _fetch(url + ".md5").decode("ascii", errors="replace").lower()
    match = re.search(r"\b[0-9a-f]{32}\b", text)
    if match is None:
        raise DataError(f"{url}.md5 holds no MD5: {text.strip()[:80]!r}")
    return match.group(0)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def split_random(n: int, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle; the first ``valid_pct`` of it is validation."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * valid_pct))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_by_time(r: Ratings, valid_pct: float) -> tuple[np.ndarray, np.ndarray]:
    """Each user's latest ``valid_pct`` of ratings (rounded; ties by file order) are validation."""
    order = np.lexsort((np.arange(len(r.users)), r.timestamps, r.users))
    users = r.users[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    counts = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    held = rank >= np.repeat(counts - np.round(counts * valid_pct).astype(int), counts)
    return np.sort(order[~held]), np.sort(order[held])


class Vocabulary:
    """Raw ids seen in training -> indices 1..n; anything else -> 0 (unknown)."""

    def __init__(self, train_ids: np.ndarray) -> None:
        self.ids = np.unique(train_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.ids, raw)
        known = (pos < len(self.ids)) & (self.ids[np.minimum(pos, len(self.ids) - 1)] == raw)
        return np.where(known, pos + 1, UNKNOWN)


class MovieLens(RatingsDataModule):
    """MovieLens ratings from ``path``: a random, by-time or the dataset's own split."""

    def __init__(
        self,
        path: str | None = None,
        download: bool = False,
        name: str = "ml-100k",
        split: str = "random",
        valid_pct: float = 0.2,
        y_range=(0.0, 5.5),
        batch_size: int = 64,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size)
        self.save_hyperparameters()

    def load(self) -> None:
        h = self.hparams
        if not h.path:
            raise ConfigError("data.path", h.path, "a folder with MovieLens files (u.data, ratings.dat or ratings.csv)")
        if h.split not in SPLITS:
            raise ConfigError("data.split", h.split, "allowed: " + ", ".join(SPLITS))
        if not 0 < h.valid_pct < 1:
            raise ConfigError("data.valid_pct", h.valid_pct, "must be in (0, 1)")
        if h.name not in ARCHIVE_MD5:
            raise ConfigError("data.name", h.name, "allowed: " + ", ".join(ARCHIVE_MD5))
        y_range = check_y_range(h.y_range)
        path = Path(h.path).expanduser()
        found = find_format(path)
        if found is None and h.download:
            download(h.name, path)
            found = find_format(path)
        if found is None:
            raise DataError(
                f"no MovieLens ratings file (u.data, ratings.dat or ratings.csv) in {path}: unzip "
                f"{BASE_URL}/{h.name}.zip there, or set data.download=true"
            )
        folder, fmt = found
        if h.split in FOLDS:
            train = self._read(folder / f"{h.split}.base", fmt, y_range)
            valid = self._read(folder / f"{h.split}.test", fmt, y_range)
        else:
            every = read_ratings(folder / fmt.ratings, fmt.separator, fmt.header, y_range)
            n = len(every.users)
            if h.split == "random":
                train_idx, valid_idx = split_random(n, h.valid_pct, h.seed)
            else:
                train_idx, valid_idx = split_by_time(every, h.valid_pct)
            train, valid = every.take(train_idx), every.take(valid_idx)
        self._index(train, valid, read_titles(folder / fmt.titles, fmt))

    def _read(self, path: Path, fmt: RatingsFormat, y_range) -> Ratings:
        if not path.exists():
            raise DataError(f"{path} not found: data.split={self.hparams.split} needs ml-100k's own {path.name}")
        return read_ratings(path, fmt.separator, fmt.header, y_range)

    def _index(self, train: Ratings, valid: Ratings, titles: dict[int, str]) -> None:
        users, items = Vocabulary(train.users), Vocabulary(train.items)
        self.n_users, self.n_items = len(users), len(items)
        self.user_ids, self.item_ids = users.ids, items.ids
        vu, vi = users.encode(valid.users), items.encode(valid.items)
        self.unseen = {
            "users": int(np.unique(valid.users[vu == UNKNOWN]).size),
            "items": int(np.unique(valid.items[vi == UNKNOWN]).size),
            "ratings": int(((vu == UNKNOWN) | (vi == UNKNOWN)).sum()),
        }
        self.item_titles = ["unknown"] + [titles.get(int(k), f"movie {k}") for k in items.ids]
        self.train_set = ratings_tensor(users.encode(train.users), items.encode(train.items), train.ratings)
        self.val_set = ratings_tensor(vu, vi, valid.ratings)
