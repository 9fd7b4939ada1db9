"""Any ratings table: a CSV with text ids trains under the MovieLens recipe and is answered in its own ids."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir
from stagetune.collab.ratings_file import RatingsFile
from stagetune.commands import recommend
from stagetune.errors import ConfigError, DataError
from stagetune.runs.run import train
from stagetune.runs.trained import load_trained

USERS = [f"user-{name}" for name in ("ada", "bo", "cy", "di", "ed", "flo", "gus", "hal", "ivy", "jo", "kai", "lu")]
ITEMS = [f"sku_{k:03d}" for k in range(15)]


def ratings_csv(path: Path, separator: str = ",", seed: int = 0) -> Path:
    """A shop's ratings with text ids and ISO dates: ``customer,product,stars,when``."""
    rng = np.random.default_rng(seed)
    rows = []
    for u, user in enumerate(USERS):
        for k, i in enumerate(rng.choice(len(ITEMS), 9, replace=False)):
            rows.append([user, ITEMS[i], str(int(np.clip(round(3 + (u % 3) - (i % 3) + rng.normal(0, 0.5)), 1, 5))), f"2024-03-{k + 1:02d}T10:00:00"])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=separator)
        writer.writerow(["customer", "product", "stars", "when"])
        writer.writerows(rows)
    return path


def table(path: Path, **kwargs) -> RatingsFile:
    data = RatingsFile(path=str(path), user_col="customer", item_col="product", rating_col="stars", batch_size=8, **kwargs)
    data.setup()
    return data


COLUMNS = ["data.user_col=customer", "data.item_col=product", "data.rating_col=stars"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_a_csv_with_text_ids_trains_under_the_movielens_recipe_and_recommends_in_its_ids(tmp_path, capsys):
    path = ratings_csv(tmp_path / "shop.csv")
    cfg = composed(
        "experiment=movielens",
        "data=ratings_file",
        f"data.path={path}",
        *COLUMNS,
        "data.batch_size=16",
        "plan.stages.all.epochs=2",
        "trainer.enable_progress_bar=false",
    )
    run = tmp_path / "run"
    train(cfg, run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["data"]["source"] == str(path)
    assert metrics["data"]["n_train"] + metrics["data"]["n_valid"] + metrics["data"]["n_test"] == len(USERS) * 9

    trained = load_trained(run)
    rated = {row[1] for row in csv.reader(open(path)) if row[0] == "user-ada"}
    rows = recommend.recommend(trained, "user-ada", k=3)
    assert len(rows) == 3 and all(r.item in ITEMS for r in rows)
    seen = {
        trained.datamodule.item_ids[i - 1]
        for part in trained.datamodule.parts()[:2]
        for i in part.items[part.users == trained.datamodule.index_of("user", "user-ada")].tolist()
    }
    assert not {r.item for r in rows} & seen, "recommendations exclude what the user rated in train and valid"
    assert seen <= rated

    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        recommend.main([str(run), "--user", "user-ada", "-k", "2"])
    assert done.value.code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "top 2 for user user-ada" and all(line.split()[0] in ITEMS for line in printed[2:])

    saved = torch.load(next(run.glob("checkpoints/last.ckpt")), weights_only=True)["RatingsFile"]
    assert saved["user_ids"] == sorted(set(saved["user_ids"])) and set(saved["user_ids"]) <= set(USERS)

    path.write_text(path.read_text().replace("user-ada", "user-zed"))  # after training, the file names a user otherwise
    with pytest.raises(DataError, match="no longer those the checkpoint was trained on"):
        load_trained(run)


def test_integer_ids_stay_integers_and_text_ids_text(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("u,i,r\n1,10,4\n2,10,3\n1,20,5\n2,30,1\n3,20,2\n1,30,3\n")
    data = RatingsFile(path=str(path), user_col="u", item_col="i", rating_col="r", test_pct=0.2, valid_pct=0.2)
    data.setup()
    assert data.user_ids.dtype.kind == "i" and data.index_of("user", "1") == data.index_of("user", 1) != 0
    shop = table(ratings_csv(tmp_path / "shop.csv"))
    assert shop.user_ids.dtype.kind == "U" and shop.index_of("user", "user-bo") >= 1 and shop.index_of("user", "nobody") == 0
    assert shop.item_names()[shop.index_of("item", "sku_004")] == "item sku_004", "items are named by the file's ids, not by index"


def test_time_split_holds_out_each_users_latest_ratings(tmp_path):
    data = table(ratings_csv(tmp_path / "shop.csv"), time_col="when", split="time", test_pct=0.25, valid_pct=0.2)
    assert len(data.test_set) == len(USERS) * 2  # round(9 * 0.25) of each user's 9
    rows = list(csv.DictReader(open(tmp_path / "shop.csv")))
    latest = {u: sorted(r["when"] for r in rows if r["customer"] == u)[-2:] for u in USERS}
    for u_index, i_index in zip(data.test_set.users.tolist(), data.test_set.items.tolist()):
        user, item = data.user_ids[u_index - 1], data.item_ids[i_index - 1] if i_index else None
        when = next(r["when"] for r in rows if r["customer"] == user and r["product"] == item) if item else None
        assert when is None or when in latest[user]


def test_file_split_follows_the_split_column(tmp_path):
    path = tmp_path / "r.tsv"
    lines = ["who\twhat\tscore\tpart"] + [f"u{k % 4}\ti{k % 5}\t{1 + k % 5}\t{'test' if k % 4 == 0 else 'train'}" for k in range(20)]
    path.write_text("\n".join(lines) + "\n")
    data = RatingsFile(path=str(path), user_col="who", item_col="what", rating_col="score", split="file", split_col="part", valid_pct=0.2)
    data.setup()
    assert len(data.test_set) == 5 and len(data.val_set) == 3 and len(data.train_set) == 12


def test_tsv_and_parquet_read_as_the_csv(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    as_csv = table(ratings_csv(tmp_path / "shop.csv"))
    as_tsv = table(ratings_csv(tmp_path / "shop.tsv", separator="\t"))
    rows = list(csv.reader(open(tmp_path / "shop.csv")))
    pq.write_table(
        pa.table({name: [r[k] for r in rows[1:]] for k, name in enumerate(rows[0])} | {"stars": [int(r[2]) for r in rows[1:]]}), tmp_path / "shop.parquet"
    )
    as_parquet = table(tmp_path / "shop.parquet")
    for other in (as_tsv, as_parquet):
        assert np.array_equal(other.user_ids, as_csv.user_ids) and np.array_equal(other.item_ids, as_csv.item_ids)
        assert torch.equal(other.train_set.ratings, as_csv.train_set.ratings) and torch.equal(other.test_set.items, as_csv.test_set.items)


def test_config_needs_the_columns_a_split_reads(tmp_path):
    path = ratings_csv(tmp_path / "shop.csv")
    with pytest.raises(ConfigError, match="data.split='time': needs data.time_col"):
        table(path, split="time")
    with pytest.raises(ConfigError, match="data.split='file': needs data.split_col"):
        table(path, split="file")
    with pytest.raises(ConfigError, match="data.split='u1': allowed: random, time, file"):
        table(path, split="u1")
