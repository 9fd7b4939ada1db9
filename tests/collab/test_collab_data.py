"""Synthetic ratings and their batches: shape, ground truth, speed, DDP sharding."""

import time

import numpy as np
import pytest
import torch

from stagetune.collab.data import SyntheticRatings, batch_loader
from stagetune.errors import ConfigError


@pytest.fixture(scope="module")
def movielens_shaped() -> SyntheticRatings:
    dm = SyntheticRatings()
    dm.setup()
    return dm


def test_defaults_are_shaped_like_movielens_100k(movielens_shaped):
    dm = movielens_shaped
    summary = dm.summary()
    assert (summary["n_users"], summary["n_items"], summary["n_train"] + summary["n_valid"] + summary["n_test"]) == (943, 1682, 100_000)
    assert (summary["n_valid"], summary["n_test"]) == (8_000, 20_000)
    ratings = torch.cat([part.ratings for part in dm.parts()])
    assert set(ratings.unique().tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 1.0 < ratings.std().item() < 1.2 and 3.3 < ratings.mean().item() < 3.7  # ML-100k: 1.13, 3.53
    counts = dm.item_counts()[1:] / 0.72
    assert 300 < counts.max() < 800 and 20 < np.median(counts) < 60  # ML-100k: 583 and 27
    assert 0.8 < summary["noise_floor"] < 0.9


def test_generator_is_reproducible_from_its_seed():
    a, b, c = (SyntheticRatings(n_ratings=5000, seed=seed) for seed in (1, 1, 2))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_set.ratings, b.val_set.ratings) and torch.equal(a.train_set.users, b.train_set.users)
    assert not torch.equal(a.val_set.ratings, c.val_set.ratings)


def test_interaction_term_has_the_configured_scale():
    """``factor_scale`` is the std of the true u . v (the rank only changes its shape)."""
    for rank in (2, 32):
        dm = SyntheticRatings(n_ratings=20000, rank=rank, factor_scale=0.6, noise=0.0, user_bias_scale=0.0, item_bias_scale=0.0, mean=3.0, round_stars=False)
        dm.setup()
        assert dm.train_set.ratings.std().item() == pytest.approx(0.6, rel=0.1)


def test_an_epoch_of_100k_ratings_takes_well_under_a_second(movielens_shaped):
    ds = movielens_shaped.train_set
    loader = batch_loader(ds, 1024, shuffle=True)
    start = time.perf_counter()
    batches = list(loader)
    elapsed = time.perf_counter() - start
    assert [len(b[0]) for b in batches[:-1]] == [1024] * (len(batches) - 1)
    assert torch.cat([b[2] for b in batches]).sort().values.tolist() == ds.ratings.sort().values.tolist()
    assert elapsed < 0.5


def test_dense_settings_fill_every_rating_and_impossible_ones_are_config_errors():
    dm = SyntheticRatings(n_users=60, n_items=80, n_ratings=4000)
    dm.setup()
    cells = torch.cat([part.users * 100 + part.items for part in dm.parts()])
    assert len(cells) == 4000 and len(cells.unique()) == 4000
    with pytest.raises(ConfigError, match=r"^data\.n_ratings=4801: between 1 and n_users \* n_items = 4800"):
        SyntheticRatings(n_users=60, n_items=80, n_ratings=4801).setup()
