"""Any ratings table: a CSV, TSV or Parquet file whose columns the config names.

``data=ratings_file data.path=FILE data.user_col=... data.item_col=... data.rating_col=...``
(``data.time_col`` optional). Ids may be anything the file writes (strings included): a column
whose every id is an integer keeps integer ids, any other is read as text. Ids are indexed from
the training part only, as MovieLens ids are (:mod:`.movielens`); the id maps are saved in every
checkpoint (:meth:`~stagetune.collab.data.RatingsDataModule.state_dict`), so the commands answer in
the file's own ids and notice a file that changed since. Splits:

* ``random``: one seeded shuffle (``test_pct`` of all ratings, then ``valid_pct`` of the rest);
* ``time``: each user's latest ``test_pct`` of ratings is test, then the latest ``valid_pct`` of
  the rest is valid (needs ``time_col``: numbers, or ISO dates such as ``2024-05-01T12:00:00``);
* ``file``: the column ``split_col`` says ``train``, ``valid`` or ``test`` per rating; with no
  ``valid`` rows a seeded ``valid_pct`` of train is valid.

Parquet needs pyarrow (``pip install 'stagetune[parquet]'``). A bad file stops with one line
naming the file and the line (or row), as a MovieLens file does.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import numpy as np

from stagetune.collab.data import RatingsDataModule
from stagetune.collab.models import check_y_range
from stagetune.collab.splits import Parts, Ratings, carve_valid, check_fraction, split_by_time, split_random
from stagetune.errors import ConfigError, DataError

SPLITS = ("random", "time", "file")
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET = (".parquet", ".pq")
PART_NAMES = ("train", "valid", "test")


def typed_ids(raw: list[str]) -> np.ndarray:
    """Integer ids when every id is an integer (``007`` and ``7`` are then one id), else text ids."""
    try:
        return np.array([int(v) for v in raw], dtype=np.int64)
    except ValueError:
        return np.array(raw, dtype=str)


def parse_time(value: str) -> float:
    """A timestamp: a number (seconds, or any increasing count) or an ISO date/time."""
    try:
        t = float(value)
    except ValueError:
        return datetime.fromisoformat(value.strip()).timestamp()
    if not np.isfinite(t):
        raise ValueError(value)
    return t


def read_columns(path: Path, columns: dict[str, str], separator: str | None) -> tuple[dict[str, list[str]], list[str]]:
    """The named columns of ``path`` as text, and where each row is (``FILE:LINE`` or ``FILE: row N``)."""
    if not path.exists():
        raise DataError(f"data.path={path}: no such file (a CSV, TSV or Parquet ratings table)")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a ratings file: set data.path to the table itself")
    if path.suffix.lower() in PARQUET:
        return _read_parquet(path, columns)
    sep = separator or SEPARATORS.get(path.suffix.lower())
    if sep is None:
        raise ConfigError("data.separator", separator, f"{path.name} is not .csv, .tsv or .parquet: name its field separator, e.g. data.separator=','")
    try:
        return _read_text(path, columns, sep)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x}; a Latin-1 file?): save it as UTF-8") from None


def _missing_columns(path: Path, columns: dict[str, str], header: list[str]) -> None:
    for key, name in columns.items():
        if name not in header:
            shown = ", ".join(header[:12]) or "nothing"
            raise DataError(f"{path}: no column {name!r} ({key}); its header has: {shown}")


def _read_text(path: Path, columns: dict[str, str], sep: str) -> tuple[dict[str, list[str]], list[str]]:
    values: dict[str, list[str]] = {key: [] for key in columns}
    where: list[str] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter=sep)
        header = next(rows, None)
        if header is None:
            raise DataError(f"{path}: no ratings in the file")
        header = [h.strip() for h in header]
        _missing_columns(path, columns, header)
        at = {key: header.index(name) for key, name in columns.items()}
        for row in rows:
            if not "".join(row).strip():
                continue
            lineno = rows.line_num
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} fields as the header has ({sep.join(header)[:80]}), got {len(row)}")
            for key, k in at.items():
                values[key].append(row[k].strip())
            where.append(f"{path}:{lineno}")
    return values, where


def _read_parquet(path: Path, columns: dict[str, str]) -> tuple[dict[str, list[str]], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("data.path", str(path), "a Parquet table needs pyarrow: pip install 'stagetune[parquet]'") from None
    try:
        table = pq.read_table(path)
    except Exception as err:
        raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    _missing_columns(path, columns, table.column_names)
    values = {key: ["" if v is None else str(v) for v in table.column(name).to_pylist()] for key, name in columns.items()}
    return values, [f"{path}: row {k + 1}" for k in range(table.num_rows)]


class RatingsFile(RatingsDataModule):
    """A ratings table from a CSV, TSV or Parquet file, its columns named in config (module doc)."""

    def __init__(
        self,
        path: str | None = None,
        user_col: str = "user",
        item_col: str = "item",
        rating_col: str = "rating",
        time_col: str | None = None,
        split: str = "random",
        split_col: str | None = None,
        separator: str | None = None,
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
        if not h.path:
            raise ConfigError("data.path", h.path, "the ratings table: a .csv, .tsv or .parquet file")
        if h.split not in SPLITS:
            raise ConfigError("data.split", h.split, "allowed: " + ", ".join(SPLITS))
        if h.split == "time" and not h.time_col:
            raise ConfigError("data.split", h.split, "needs data.time_col, the column of each rating's time")
        if h.split == "file" and not h.split_col:
            raise ConfigError("data.split", h.split, "needs data.split_col, the column saying train, valid or test")
        check_fraction("data.valid_pct", h.valid_pct)
        check_fraction("data.test_pct", h.test_pct)
        y_range = check_y_range(h.y_range)
        path = Path(h.path).expanduser()
        columns = {"data.user_col": h.user_col, "data.item_col": h.item_col, "data.rating_col": h.rating_col}
        if h.time_col:
            columns["data.time_col"] = h.time_col
        if h.split == "file":
            columns["data.split_col"] = h.split_col
        values, where = read_columns(path, columns, h.separator)
        if not where:
            raise DataError(f"{path}: no ratings in the file")
        table, labels = self._table(values, where, y_range)
        self.source = str(path)
        self.index_parts(table, self._parts(table, labels, path))

    def _table(self, values: dict[str, list[str]], where: list[str], y_range) -> tuple[Ratings, list[str] | None]:
        lo, hi = y_range
        ratings = np.empty(len(where), dtype=np.float32)
        stamps = np.zeros(len(where))
        for key in ("data.user_col", "data.item_col"):
            empty = next((k for k, v in enumerate(values[key]) if not v), None)
            if empty is not None:
                raise DataError(f"{where[empty]}: empty {key.removeprefix('data.').removesuffix('_col')} id")
        for k, text in enumerate(values["data.rating_col"]):
            try:
                r = float(text)
            except ValueError:
                raise DataError(f"{where[k]}: rating {text!r} is not a number") from None
            if not lo <= r <= hi:
                raise DataError(f"{where[k]}: rating {r:g} is outside model.y_range [{lo:g}, {hi:g}]")
            ratings[k] = r
        for k, text in enumerate(values.get("data.time_col", [])):
            try:
                stamps[k] = parse_time(text)
            except (ValueError, OverflowError, OSError):
                raise DataError(f"{where[k]}: time {text!r} is neither a number nor an ISO date (2024-05-01 or 2024-05-01T12:00:00)") from None
        labels = values.get("data.split_col")
        for k, label in enumerate(labels or []):
            if label not in PART_NAMES:
                raise DataError(f"{where[k]}: split {label!r} is not one of {', '.join(PART_NAMES)} (data.split_col)")
        users, items = typed_ids(values["data.user_col"]), typed_ids(values["data.item_col"])
        return Ratings(users, items, ratings, stamps), labels

    def _parts(self, table: Ratings, labels: list[str] | None, path: Path) -> Parts:
        h = self.hparams
        if h.split == "random":
            return split_random(len(table), h.test_pct, h.valid_pct, h.split_seed)
        if h.split == "time":
            return split_by_time(table, h.test_pct, h.valid_pct)
        label = np.array(labels)
        test = np.flatnonzero(label == "test")
        if not len(test):
            raise DataError(f"{path}: no rating is marked test in column {h.split_col!r} (data.split=file)")
        train, valid = np.flatnonzero(label == "train"), np.flatnonzero(label == "valid")
        if not len(valid):
            kept, carved = carve_valid(len(train), h.valid_pct, h.split_seed)
            train, valid = train[kept], train[carved]
        return Parts(train, valid, test)

    def item_names(self) -> list[str]:
        """A label per item index: the file's own item id (index 0 is "unknown")."""
        return ["unknown"] + [f"item {i}" for i in self.item_ids.tolist()]

    def summary(self) -> dict:
        """The run's record of its data: the source, the split and, where it shuffles, its ``split_seed``."""
        seeded = {"split_seed": self.hparams.split_seed} if self.hparams.split != "time" else {}
        return {"source": self.source, "split": self.hparams.split, **seeded, **super().summary()}
