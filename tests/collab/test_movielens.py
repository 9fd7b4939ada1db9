"""MovieLens files: each format, titles, three-part splits, downloads and the errors a user can cause."""

import hashlib
import io
import json
import urllib.error
import zipfile

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir
from stagetune.collab import movielens
from stagetune.collab.models import DotBias
from stagetune.collab.movielens import MovieLens
from stagetune.collab.splits import Ratings, mku_fold, split_by_time, split_random
from stagetune.errors import ConfigError, DataError
from stagetune.runs.run import train

# (user, item, rating, timestamp): 4 users, 5 items; user 4 and item 5 rate/are rated once.
ROWS = [
    (1, 1, 5, 100),
    (1, 2, 3, 200),
    (1, 3, 4, 300),
    (1, 4, 1, 400),
    (2, 1, 4, 100),
    (2, 2, 2, 250),
    (2, 3, 5, 260),
    (2, 4, 3, 270),
    (3, 1, 1, 150),
    (3, 2, 4, 160),
    (3, 3, 2, 170),
    (3, 5, 5, 180),
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


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def loaded(path, **kwargs) -> MovieLens:
    dm = MovieLens(path=str(path), **kwargs)
    dm.setup()
    return dm


def n_ratings(dm: MovieLens) -> int:
    return sum(len(part) for part in dm.parts())


@pytest.mark.parametrize("writer,rating_shift,title_suffix", [(write_100k, 0, ""), (write_1m, 0, ""), (write_csv, -0.5, ", The")])
def test_each_format_parses_ratings_and_titles(tmp_path, writer, rating_shift, title_suffix):
    dm = loaded(writer(tmp_path / "ml"), split="random", valid_pct=0.2, split_seed=0)
    ratings = torch.cat([part.ratings for part in dm.parts()]).sort().values
    expected = sorted(r + rating_shift for _, _, r, _ in ROWS)
    assert ratings.tolist() == pytest.approx(expected)
    assert min(len(part) for part in dm.parts()) > 0
    assert "Café au lait (1993)" + title_suffix in dm.item_names()
    assert "Amélie (2001)" + title_suffix in dm.item_names()


def test_files_in_an_ml_subfolder_are_found(tmp_path):
    write_100k(tmp_path / "ml-100k")
    dm = loaded(tmp_path)
    assert n_ratings(dm) == len(ROWS)


def test_several_ml_folders_are_an_error_listing_them(tmp_path):
    write_100k(tmp_path / "ml-100k")
    write_1m(tmp_path / "ml-1m")
    with pytest.raises(DataError) as err:
        loaded(tmp_path, split="random")
    message = str(err.value)
    assert "\n" not in message and "several MovieLens folders (ml-100k, ml-1m)" in message
    assert f"data.path={tmp_path / 'ml-100k'}" in message


def test_a_random_split_beside_the_official_folds_is_a_warning_naming_them(tmp_path, caplog):
    folder = write_100k(tmp_path / "ml")
    for kind in ("base", "test"):
        (folder / f"u1.{kind}").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS))
    with caplog.at_level("WARNING", logger="stagetune"):
        loaded(folder, split="random")
    assert "data.split=random" in caplog.text and "own split (u1.base)" in caplog.text and "data.split=u1" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="stagetune"):
        loaded(tmp_path / "ml", split="u1")
    assert not caplog.text


def test_folds_of_other_releases_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.split='u1': .*ratings\.dat: use random or time"):
        loaded(write_1m(tmp_path / "ml"))


def test_random_split_is_three_way_and_reproducible_from_its_seed():
    a, b, c = (split_random(1000, 0.2, 0.1, seed=seed) for seed in (3, 3, 4))
    assert (len(a.train), len(a.valid), len(a.test)) == (720, 80, 200)
    assert np.array_equal(np.sort(np.r_[a.train, a.valid, a.test]), np.arange(1000))
    assert np.array_equal(a.test, b.test) and np.array_equal(a.valid, b.valid) and not np.array_equal(a.test, c.test)


def test_time_split_holds_out_each_users_latest_ratings_for_test_then_valid():
    r = Ratings(*(np.array(col) for col in zip(*ROWS)))
    parts = split_by_time(r, test_pct=0.25, valid_pct=0.34)
    # users 1-3 have 4 ratings: the latest is test, the one before it valid; user 4 keeps its only one.
    assert sorted(parts.test.tolist()) == [3, 7, 11]
    assert sorted(parts.valid.tolist()) == [2, 6, 10]
    assert sorted(parts.train.tolist()) == [0, 1, 4, 5, 8, 9, 12]


def test_dataset_fold_files_are_used_and_missing_ones_rebuilt_from_u_data(tmp_path):
    folder = write_100k(tmp_path / "ml")
    base, test = ROWS[:10], ROWS[10:]
    (folder / "u1.base").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in base))
    (folder / "u1.test").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in test))
    dm = loaded(folder, split="u1", valid_pct=0.2)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (8, 2, 3)
    assert sorted(dm.test_set.ratings.tolist()) == sorted(float(r) for _, _, r, _ in test)
    u2 = loaded(folder, split="u2", valid_pct=0.2)
    r = Ratings(*(np.array(col) for col in zip(*ROWS)))
    assert sorted(u2.test_set.ratings.tolist()) == sorted(r.ratings[mku_fold(r, "u2")[1]].tolist())
    (folder / "u1.test").unlink()
    with pytest.raises(DataError, match=r"u1\.test not found beside its pair"):
        loaded(folder, split="u1")


def test_ids_seen_only_in_valid_or_test_are_counted_and_predicted(tmp_path):
    folder = write_100k(tmp_path / "ml")
    (folder / "u1.base").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS[:8]))
    (folder / "u1.test").write_text("1\t5\t4\t1\n9\t1\t3\t1\n9\t7\t2\t1\n")  # item 5, user 9, both new
    dm = loaded(folder, split="u1", valid_pct=0.25)
    assert dm.unseen["test"] == {"users": 1, "items": 2, "ratings": 3}
    model = DotBias(**dm.model_kwargs(), n_factors=3).eval()
    pred = model(dm.test_set.users, dm.test_set.items)
    assert pred[2].item() == pytest.approx(dm.global_mean, abs=1e-5)
    assert dm.summary()["test_ratings_with_unseen_id"] == 3


@pytest.mark.parametrize(
    "content,message",
    [
        ("1\t2\t3\t4\n1\t2\tthree\t4\n", r"u\.data:2: expected USER<TAB>ITEM<TAB>RATING<TAB>TIMESTAMP"),
        ("1\t2\t3\t4\n1\t2\t3\n", r"u\.data:2: expected"),
        ("1\t2\t3\t4\n\n1\t2\t9\t4\n", r"u\.data:3: rating 9 is outside model\.y_range \[0, 5\.5\]"),
        ("", r"u\.data: no ratings"),
    ],
)
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
    assert n_ratings(dm) == len(ROWS)


def test_split_seed_picks_the_random_split_and_the_run_records_it(tmp_path):
    folder = write_100k(tmp_path / "ml")
    a, b, c = (loaded(folder, split="random", valid_pct=0.2, split_seed=seed) for seed in (5, 5, 6))
    assert torch.equal(a.test_set.ratings, b.test_set.ratings) and torch.equal(a.val_set.users, b.val_set.users)
    assert [(p.users.tolist(), p.items.tolist()) for p in a.parts()] != [(p.users.tolist(), p.items.tolist()) for p in c.parts()]
    assert a.summary()["split_seed"] == 5 and "split_seed" not in loaded(folder, split="time").summary()
    cfg = composed(
        "experiment=movielens",
        f"data.path={folder}",
        "data.split=random",
        "data.split_seed=6",
        "data.valid_pct=0.2",
        "data.batch_size=2",
        "plan.stages.all.epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
    )
    train(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["data"]["split_seed"] == 6 and record["data"]["n_test"] == len(c.test_set)
