"""MovieLens ratings split into train, valid and test: the bundled ML-100k, or GroupLens's files.

With ``data.path`` unset, the real ML-100k that set-up put in the cache (:mod:`.bundled`). Else
read from ``data.path`` (or its one ``ml-*`` subfolder, where the archive unpacks):

* ml-100k ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``; titles from ``u.item``
  (``id|title|...``, latin-1), side features (:mod:`.side`) from ``u.item`` and ``u.user``; its own folds ``u1``..``u5``, ``ua``, ``ub`` (``.base``/``.test``).
* ml-1m ``ratings.dat``: ``user::item::rating::timestamp``; titles from ``movies.dat`` (latin-1).
* ml-latest-small / ml-25m ``ratings.csv``: header ``userId,movieId,rating,timestamp``; titles
  from ``movies.csv`` (UTF-8, quoted CSV).

The split is ML-100k's ``u1`` by default (the one papers report); folds missing from a folder are
rebuilt from ``u.data`` as ``mku.sh`` builds them (:mod:`.splits`). Ids are indexed from the
training part only (1..n); an id that appears only in valid or test maps to 0, "unknown", and is
counted in the run's summary.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import logging
import re
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from stagetune.collab import bundled
from stagetune.collab.data import RatingsDataModule
from stagetune.collab.models import check_y_range
from stagetune.collab.side import read_grouplens
from stagetune.collab.splits import (
    FOLDS,
    SPLITS,
    Parts,
    Ratings,
    carve_valid,
    check_fraction,
    mku_fold,
    split_by_time,
    split_random,
)
from stagetune.errors import ConfigError, DataError

log = logging.getLogger("stagetune")

BASE_URL = "https://files.grouplens.org/datasets/movielens"
# Published MD5s of the archives that do not change; ml-latest-small is re-released, so its MD5 is
# read from the .md5 file GroupLens publishes next to it.
ARCHIVE_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-latest-small": None,
}


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


def read_ratings(path: Path, separator: str, header: bool, y_range: tuple[float, float]) -> Ratings:
    """Parse a ratings file; a malformed line, a rating outside ``y_range`` or a non-finite timestamp
    stops at ``file:line``. A UTF-8 byte-order mark (files saved by Excel or Notepad) is skipped."""
    sep_name = {"\t": "<TAB>", "::": "::", ",": ","}[separator]
    expected = sep_name.join(["USER", "ITEM", "RATING", "TIMESTAMP"])
    lo, hi = y_range
    users, items, ratings, stamps = [], [], [], []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if (header and lineno == 1) or not line.strip():
                continue
            fields = line.rstrip("\r\n").split(separator)
            try:
                if len(fields) != 4:
                    raise ValueError
                u, i, r, t = int(fields[0]), int(fields[1]), float(fields[2]), int(float(fields[3]))
            except (ValueError, OverflowError):  # int(float("inf")) overflows, int(float("nan")) is a ValueError
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
    if not path.is_file():
        raise DataError(f"{path} is a directory, not a titles file: remove it or put the file there")
    try:
        return _titles(path, fmt)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not {fmt.titles_encoding.upper()} text (byte {err.object[err.start]:#04x}; a Latin-1 file?): "
            f"save it as {fmt.titles_encoding.upper()}, as GroupLens publishes it"
        ) from None


def _titles(path: Path, fmt: RatingsFormat) -> dict[int, str]:
    titles: dict[int, str] = {}
    with open(path, "rb") as f:  # a UTF-8 byte order mark says the file's encoding, whatever the format's own
        encoding = "utf-8-sig" if f.read(3) == codecs.BOM_UTF8 else fmt.titles_encoding
    with open(path, encoding=encoding, newline="") as f:
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
    """The folder (``path``, or the one ``ml-*`` folder in it) holding a ratings file, and its format.

    Several ``ml-*`` folders with ratings are an error listing them: taking one would be a guess.
    """

    def ratings_format(folder: Path) -> RatingsFormat | None:
        fmt = next((fmt for fmt in FORMATS if (folder / fmt.ratings).exists()), None)
        if fmt is not None and not (folder / fmt.ratings).is_file():
            raise DataError(f"{folder / fmt.ratings} is a directory, not a ratings file: remove it or put the file there")
        return fmt

    if (fmt := ratings_format(path)) is not None:
        return path, fmt
    found = [(folder, fmt) for folder in sorted(path.glob("ml-*")) if folder.is_dir() and (fmt := ratings_format(folder))]
    if len(found) > 1:
        names = ", ".join(folder.name for folder, _ in found)
        raise DataError(f"{path} holds several MovieLens folders ({names}): set data.path to one of them, e.g. data.path={found[0][0]}")
    return found[0] if found else None


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


class MovieLens(RatingsDataModule):
    """MovieLens ratings in three parts: ML-100k's own fold (default ``u1``), a random or a by-time split."""

    def __init__(
        self,
        path: str | None = None,
        download: bool = False,
        name: str = "ml-100k",
        split: str = "u1",
        valid_pct: float = 0.1,
        test_pct: float = 0.2,
        y_range=(0.0, 5.5),
        batch_size: int = 64,
        split_seed: int = 42,
    ) -> None:
        super().__init__(batch_size)
        self.save_hyperparameters()

    def load(self) -> None:
        h = self.hparams
        if h.split not in SPLITS:
            raise ConfigError("data.split", h.split, "allowed: " + ", ".join(SPLITS))
        check_fraction("data.valid_pct", h.valid_pct)
        check_fraction("data.test_pct", h.test_pct)
        if h.name not in ARCHIVE_MD5:
            raise ConfigError("data.name", h.name, "allowed: " + ", ".join(ARCHIVE_MD5))
        y_range = check_y_range(h.y_range)
        if h.path:
            every, folder, fmt, titles = self._from_folder(Path(h.path).expanduser(), y_range)
        else:
            if h.name != "ml-100k" or h.download:
                raise ConfigError("data.path", h.path, f"a folder for data.name={h.name} (download={h.download}); only ml-100k is bundled")
            every, folder, fmt, titles = bundled.read_ratings(), None, FORMATS[0], bundled.read_titles()
            check_range(every, y_range, str(bundled.folder() / bundled.RATINGS))
            self.source = f"bundled ML-100k ({bundled.folder()})"
            self.read_side = bundled.read_side
        table, parts = self._parts(every, folder, fmt, y_range)
        self.index_parts(table, parts)
        self.item_titles = ["unknown"] + [titles.get(int(k), f"movie {k}") for k in self.item_ids]

    def _from_folder(self, path: Path, y_range) -> tuple[Ratings, Path, RatingsFormat, dict[int, str]]:
        h = self.hparams
        found = find_format(path)
        if found is None and h.download:
            download(h.name, path)
            found = find_format(path)
        if found is None:
            raise DataError(
                f"no MovieLens ratings file (u.data, ratings.dat or ratings.csv) in {path}: unzip "
                f"{BASE_URL}/{h.name}.zip there, set data.download=true, or leave data.path unset for the bundled ML-100k"
            )
        folder, fmt = found
        self.source = str(folder)
        if h.split not in FOLDS:
            present = [f"{fold}.base" for fold in FOLDS if (folder / f"{fold}.base").exists()]
            if present:
                log.warning(
                    "data.split=%s while %s has ml-100k's own split (%s): results will not compare with papers' u1 numbers; data.split=u1 uses it",
                    h.split,
                    folder,
                    ", ".join(present),
                )
        every = read_ratings(folder / fmt.ratings, fmt.separator, fmt.header, y_range)
        self.read_side = partial(read_grouplens, folder) if fmt.ratings == "u.data" else None
        return every, folder, fmt, read_titles(folder / fmt.titles, fmt)

    def _parts(self, every: Ratings, folder: Path | None, fmt: RatingsFormat, y_range) -> tuple[Ratings, Parts]:
        """One table and the train/valid/test indices into it."""
        h = self.hparams
        if h.split == "random":
            return every, split_random(len(every), h.test_pct, h.valid_pct, h.split_seed)
        if h.split == "time":
            return every, split_by_time(every, h.test_pct, h.valid_pct)
        if fmt.ratings != "u.data":
            raise ConfigError("data.split", h.split, f"ml-100k's own fold; {folder} holds {fmt.ratings}: use random or time")
        files = [folder / f"{h.split}.{kind}" for kind in ("base", "test")] if folder else []
        if files and all(f.exists() for f in files):
            base, test = (read_ratings(f, fmt.separator, fmt.header, y_range) for f in files)
            table = Ratings(*(np.r_[a, b] for a, b in zip(vars(base).values(), vars(test).values())))
            base_idx, test_idx = np.arange(len(base)), len(base) + np.arange(len(test))
        else:
            if any(f.exists() for f in files):
                missing = next(f for f in files if not f.exists())
                raise DataError(f"{missing} not found beside its pair: restore it, or remove both to rebuild {h.split} from u.data")
            table, (base_idx, test_idx) = every, mku_fold(every, h.split)
        train, valid = carve_valid(len(base_idx), h.valid_pct, h.split_seed)
        return table, Parts(base_idx[train], base_idx[valid], test_idx)

    def summary(self) -> dict:
        """The run's record of its data: the source, the split and, where it shuffles (random, a fold's valid), its ``split_seed``."""
        seeded = {"split_seed": self.hparams.split_seed} if self.hparams.split != "time" else {}
        return {"source": self.source, "split": self.hparams.split, **seeded, **super().summary()}


def check_range(r: Ratings, y_range: tuple[float, float], where: str) -> None:
    """Every rating inside the model's range, or a one-line error naming the first one outside."""
    lo, hi = y_range
    outside = np.flatnonzero((r.ratings < lo) | (r.ratings > hi))
    if len(outside):
        raise DataError(f"{where}: rating {r.ratings[outside[0]]:g} is outside model.y_range [{lo:g}, {hi:g}]")
