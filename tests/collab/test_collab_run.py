"""Whole runs of the real configs: the synthetic run reaches its noise floor and explains itself."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir
from stagetune.errors import ConfigError
from stagetune.runs.run import train

# Dense enough (300 x 300, 80,000 ratings, rank 2) that a fitted model can come close to the truth;
# the MovieLens-shaped default is harder: see docs/results/movielens.md for its numbers.
DENSE = [
    "data.n_users=300",
    "data.n_items=300",
    "data.n_ratings=80000",
    "data.rank=2",
    "data.factor_scale=0.5",
    "data.noise=0.5",
    "data.round_stars=false",
    "data.popularity_exponent=0",
    "data.activity_exponent=0",
    "optim.wd_kind=l2",
    "optim.wd=1e-4",
    "plan.lr=3e-2",
]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensor ops: extra threads only contend for the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_synthetic_run_reaches_its_noise_floor_and_writes_its_interpretation(tmp_path):
    cfg = composed("experiment=ratings_synthetic", "trainer.enable_progress_bar=false", *DENSE)
    best = train(cfg, tmp_path).value
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    floor = metrics["data"]["noise_floor"]
    assert metrics["metric"]["name"] == "val/rmse" and best == pytest.approx(metrics["metric"]["best"])
    assert best < 1.05 * floor, (best, floor)
    out = tmp_path / "interpretation"
    ranked = json.loads((out / "interpretation.json").read_text())
    assert len(ranked["bias"]["lowest"]) == 10 and ranked["components"][0]["component"] == 1
    assert (out / "item_pca.png").stat().st_size > 10_000
    assert "Learned item bias" in (out / "interpretation.md").read_text()
    metadata = next((tmp_path / "tensorboard").rglob("metadata.tsv")).read_text().splitlines()
    assert len(metadata) == 300 and metadata[0] == "item 1"


def test_inverted_y_range_stops_the_run_with_a_config_error(tmp_path):
    cfg = composed("experiment=ratings_synthetic", "model.y_range=[5.5,0]", "data.n_ratings=2000")
    with pytest.raises(ConfigError, match=r"^model\.y_range=\[5\.5, 0(\.0)?\]"):
        train(cfg, tmp_path)


def test_sparse_embeddings_reach_the_noise_floor_too(tmp_path):
    cfg = composed("experiment=ratings_synthetic", "trainer.enable_progress_bar=false", "model.sparse=true", *DENSE)
    best = train(cfg, tmp_path).value
    floor = json.loads((tmp_path / "metrics.json").read_text())["data"]["noise_floor"]
    assert best < 1.05 * floor, (best, floor)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [(["optim=sgd"], "optim.name"), (["trainer.gradient_clip_val=1.0"], "model.sparse")],
)
def test_sparse_embeddings_refuse_what_needs_dense_gradients(tmp_path, overrides, key):
    cfg = composed("experiment=ratings_synthetic", "model.sparse=true", "data.n_ratings=2000", *overrides)
    with pytest.raises(ConfigError, match=rf"^{key}="):
        train(cfg, tmp_path)


def test_per_group_wd_names_the_models_groups_and_is_logged_per_group(tmp_path):
    cfg = composed("experiment=ratings_synthetic", "data.n_ratings=2000", "plan.stages.all.wd={mlp: 0.1}")
    with pytest.raises(ConfigError, match=r"^plan\.stages\.all\.wd\.mlp=0\.1: not a layer group.*embeddings"):
        train(cfg, tmp_path / "bad")
    cfg = composed(
        "experiment=ratings_synthetic",
        "data.n_ratings=2000",
        "trainer.enable_progress_bar=false",
        "plan.stages.all.epochs=1",
        "optim.wd=0.02",
        "plan.stages.all.wd={biases: 0.0}",
    )
    train(cfg, tmp_path / "good")
    rows = json.loads((tmp_path / "good" / "metrics.json").read_text())["stages"]
    assert rows[0]["wd"] == {"embeddings": 0.02, "biases": 0.0}
