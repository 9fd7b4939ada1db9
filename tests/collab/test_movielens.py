"""MovieLens files: each format, titles, splits, downloads and the errors a user can cause."""

import hashlib
import io
import urllib.error
import zipfile

import numpy as np
import pytest
import torch

from stagetune.collab import movielens
from stagetune.collab.models import DotBias
from stagetune.collab.movielens import MovieLens
from stagetune.errors import DataError

# (user, item, rating, timestamp): 4 users, 5 items; user 4 and item 5 rate/are rated once.
ROWS = [
    (1, 1, 5, 100), (1, 2, 3, 200), (1, 3, 4, 300), (1, 4, 1, 400),
    (2, 1, 4, 100), (2, 2, 2, 250), (2, 3, 5, 260), (2, 4, 3, 270),
    (3, 1, 1, 150), (3, 2, 4, 160), (3, 3, 2, 170), (3, 5, 5, 180),
    (4, 1, 3, 500),
]
TITLES = {1: "Toy Story (1995)", 2: "Café au lait (1993)", 3: "Amélie (2001)", 4: "Heat (1995)", 5: "Se7en (1995)"}


def write_100k(folder, rows=ROWS):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    lines = "".join(f"{k}|{t}|01-Jan-1995||http://x|0|1\n" for k, t in TITLES.items())
    (folder / "u.item").write_bytes(lines.encode("latin-1"))
    return folder


def write_1m(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ROWS))
    (folder / "movies.dat").write_bytes("".join(f"{k}::{t}::Drama\n" for k, t in TITLES.items()).encode("latin-1"))
    return folder


def write_csv(folder):
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{u},{i},{r - 0.5},{t}\n" for u, i, r, t in ROWS)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + body)
    titles = "".join(f'{k},"{t}, The",Drama\n' for k, t in TITLES.items())
    (folder / "movies.csv").write_text("movieId,title,genres\n" + titles, encoding="utf-8")
    return folder


def loaded(path, **kwargs) -> MovieLens:
    dm = MovieLens(path=str(path), **kwargs)
    dm.setup()
    return dm


def raw_pairs(dm: MovieLens, ds) -> set:
    return {(int(u), int(i)) for u, i in zip(ds.users, ds.items)}


@pytest.mark.parametrize(
    "writer,rating_shift,title_suffix", [(write_100k, 0, ""), (write_1m, 0, ""), (write_csv, -0.5, ", The")]
)
def test_each_format_parses_ratings_and_titles(tmp_path, writer, rating_shift, title_suffix):
    dm = loaded(writer(tmp_path / "ml"), valid_pct=0.2, seed=0)
    ratings = torch.cat([dm.train_set.ratings, dm.val_set.ratings]).sort().values
    expected = sorted(r + rating_shift for _, _, r, _ in ROWS)
    assert ratings.tolist() == pytest.approx(expected)
    assert len(dm.train_set) + len(dm.val_set) == len(ROWS)
    assert "Café au lait (1993)" + title_suffix in dm.item_names()
    assert "Amélie (2001)" + title_suffix in dm.item_names()


def test_files_in_an_ml_subfolder_are_found(tmp_path):
    write_100k(tmp_path / "ml-100k")
    dm = loaded(tmp_path)
    assert len(dm.train_set) + len(dm.val_set) == len(ROWS)


def test_random_split_is_disjoint_and_reproducible_from_its_seed():
    rows = np.arange(1000)
    a_train, a_val = movielens.split_random(1000, 0.2, seed=3)
    b_train, b_val = movielens.split_random(1000, 0.2, seed=3)
    c_train, c_val = movielens.split_random(1000, 0.2, seed=4)
    assert len(a_val) == 200 and not set(a_train) & set(a_val)
    assert np.array_equal(np.sort(np.r_[a_train, a_val]), rows)
    assert np.array_equal(a_val, b_val) and not np.array_equal(a_val, c_val)


def test_time_split_holds_out_each_users_latest_ratings():
    r = movielens.Ratings(*(np.array(col) for col in zip(*ROWS)))
    train, valid = movielens.split_by_time(r, valid_pct=0.25)
    assert not set(train) & set(valid) and len(train) + len(valid) == len(ROWS)
    # users 1-3 have 4 ratings each: the latest one of each is held out; user 4 keeps its only one.
    assert sorted(valid.tolist()) == [3, 7, 11]
    again = movielens.split_by_time(r, valid_pct=0.25)
    assert np.array_equal(again[1], valid)


def test_dataset_fold_files_are_used_and_disjoint(tmp_path):
    folder = write_100k(tmp_path / "ml")
    base, test = ROWS[:10], ROWS[10:]
    (folder / "u1.base").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in base))
    (folder / "u1.test").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in test))
    dm = loaded(folder, split="u1")
    assert len(dm.train_set) == 10 and len(dm.val_set) == 3
    with pytest.raises(DataError, match=r"u2\.base not found"):
        loaded(folder, split="u2")


def test_ids_seen_only_in_validation_are_counted_and_predicted(tmp_path):
    folder = write_100k(tmp_path / "ml")
    (folder / "u1.base").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS[:8]))
    (folder / "u1.test").write_text("1\t5\t4\t1\n9\t1\t3\t1\n9\t7\t2\t1\n")  # item 5, user 9, both new
    dm = loaded(folder, split="u1")
    assert dm.unseen == {"users": 1, "items": 2, "ratings": 3}
    model = DotBias(**dm.model_kwargs(), n_factors=3).eval()
    pred = model(dm.val_set.users, dm.val_set.items)
    assert pred[2].item() == pytest.approx(dm.global_mean, abs=1e-5)
    assert dm.summary()["valid_ratings_with_unseen_id"] == 3


@pytest.mark.parametrize("content,message", [
    ("1\t2\t3\t4\n1\t2\tthree\t4\n", r"u\.data:2: expected USER<TAB>ITEM<TAB>RATING<TAB>TIMESTAMP"),
    ("1\t2\t3\t4\n1\t2\t3\n", r"u\.data:2: expected"),
    ("1\t2\t3\t4\n\n1\t2\t9\t4\n", r"u\.data:3: rating 9 is outside model\.y_range \[0, 5\.5\]"),
    ("", r"u\.data: no ratings"),
])
def test_bad_files_stop_with_file_line_and_what_was_expected(tmp_path, content, message):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.data").write_text(content)
    with pytest.raises(DataError, match=message):
        loaded(folder)


def test_missing_files_offline_fail_with_one_line_saying_where_to_put_them(tmp_path, monkeypatch):
    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(movielens, "_fetch", offline)
    with pytest.raises(DataError) as err:
        loaded(tmp_path / "nothing", download=True)
    assert "\n" not in str(err.value) and f"put the unpacked ml-100k files in {tmp_path / 'nothing'}" in str(err.value)
    with pytest.raises(DataError, match="set data.download=true"):
        loaded(tmp_path / "nothing")


def test_download_checks_the_md5_before_unpacking(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("ml-100k/u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS))
    archive = buffer.getvalue()
    monkeypatch.setattr(movielens, "_fetch", lambda url: archive)
    with pytest.raises(DataError, match="has MD5 .* expected 0e33842e24a9c977be4e0107933c0723; not unpacked"):
        loaded(tmp_path / "wrong", download=True)
    assert not (tmp_path / "wrong" / "ml-100k").exists()
    monkeypatch.setitem(movielens.ARCHIVE_MD5, "ml-100k", hashlib.md5(archive).hexdigest())
    dm = loaded(tmp_path / "right", download=True)
    assert len(dm.train_set) + len(dm.val_set) == len(ROWS)
