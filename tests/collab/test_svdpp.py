"""SVD++ (model=svdpp): the formula, N(u) from training ratings only, layer groups a plan can stage."""

import math

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir
from stagetune.build import build
from stagetune.collab.data import RatedItems, RatingsTensor, SyntheticRatings
from stagetune.collab.models import SVDpp
from stagetune.runs.recommend import recommend, similar
from stagetune.runs.run import train
from stagetune.runs.trained import load_trained


def rated_of(users, items, n_users) -> RatedItems:
    return RatedItems.of(RatingsTensor(torch.tensor(users), torch.tensor(items), torch.ones(len(users))), n_users)


def test_prediction_matches_the_formula_written_out():
    # user 1 rated items 1 and 3, user 2 rated item 2 (training part)
    model = SVDpp(n_users=2, n_items=3, n_factors=2, y_range=(0.0, 5.5), rated=rated_of([1, 2, 1], [1, 2, 3], 2))
    with torch.no_grad():
        model.user_factors.weight[1:] = torch.tensor([[1.0, 0.5], [-0.5, 2.0]])
        model.item_factors.weight[1:] = torch.tensor([[0.2, -0.1], [1.0, 1.0], [0.3, 0.4]])
        model.implicit.weight[1:] = torch.tensor([[0.4, 0.0], [2.0, -1.0], [0.0, 0.6]])
        model.user_bias.weight[1:, 0] = torch.tensor([0.1, -0.3])
        model.item_bias.weight[1:, 0] = torch.tensor([0.2, 0.05, -0.2])
    pred = model(torch.tensor([1, 2, 0]), torch.tensor([2, 3, 1]))
    # user 1, item 2: p_u + (y_1 + y_3)/sqrt(2) = (1 + 0.4/√2, 0.5 + 0.6/√2); . q_2 = (1, 1); + 0.1 + 0.05
    s1 = (1 + 0.4 / math.sqrt(2)) + (0.5 + 0.6 / math.sqrt(2)) + 0.1 + 0.05
    # user 2, item 3: p_u + y_2 = (1.5, 1.0); . (0.3, 0.4) = 0.85; - 0.3 - 0.2
    s2 = 0.85 - 0.3 - 0.2
    # unknown user 0 (rated nothing), item 1: the item bias alone
    s3 = 0.2
    expected = [5.5 / (1 + math.exp(-s)) for s in (s1, s2, s3)]
    assert pred.tolist() == pytest.approx(expected, abs=1e-6)


def test_vectorised_implicit_sum_equals_a_per_user_loop_forward_and_backward():
    torch.manual_seed(0)
    users, items = torch.randint(1, 7, (40,)), torch.randint(1, 9, (40,))
    model = SVDpp(n_users=7, n_items=8, n_factors=3, rated=rated_of(users.tolist(), items.tolist(), 7))
    with torch.no_grad():
        model.implicit.weight[1:].normal_()
    batch = torch.tensor([3, 1, 3, 0, 6, 1, 1, 5])  # repeated users, and the unknown user 0 (rated nothing)

    def reference(u: int) -> torch.Tensor:
        rated = items[users == u]
        return model.implicit.weight[rated].sum(0) / math.sqrt(len(rated)) if len(rated) else torch.zeros(3)

    weights = torch.randn(len(batch), 3)
    (model.implicit_sum(batch) * weights).sum().backward()
    fast = model.implicit.weight.grad.clone()
    model.implicit.weight.grad = None
    expected = torch.stack([reference(int(u)) for u in batch])
    (expected * weights).sum().backward()
    assert torch.allclose(model.implicit_sum(batch), expected, atol=1e-6)
    assert torch.allclose(fast, model.implicit.weight.grad, atol=1e-6)


def test_shapes_and_layer_groups():
    model = SVDpp(n_users=4, n_items=5, n_factors=3, rated=rated_of([1, 1, 4], [2, 5, 5], 4))
    assert model(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 5])).shape == (4,)
    assert model.implicit.weight.shape == (6, 3) and model.implicit.weight[0].abs().sum() == 0
    assert model.rated_indptr.tolist() == [0, 0, 2, 2, 2, 3]
    groups = model.layer_groups()
    assert [g.name for g in groups] == ["embeddings", "implicit", "biases"]
    assert [list(g.modules) for g in groups] == [[model.user_factors, model.item_factors], [model.implicit], [model.user_bias, model.item_bias]]


def test_implicit_feedback_comes_from_training_ratings_only():
    data = SyntheticRatings(n_users=20, n_items=30, n_ratings=200, seed=1)
    rated = data.model_kwargs()["rated"]
    train = data.train_set
    for u in range(data.n_users + 1):
        mine = rated.items[rated.indptr[u] : rated.indptr[u + 1]]
        assert sorted(mine.tolist()) == sorted(train.items[train.users == u].tolist())
    for part in (data.val_set, data.test_set):  # other valid/test ratings: the same N(u)
        part.users[:] = 1
        part.items[:] = torch.arange(len(part.items)) % data.n_items + 1
    again = data.model_kwargs()["rated"]
    assert torch.equal(again.indptr, rated.indptr) and torch.equal(again.items, rated.items)


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def one_thread():
    """Tiny tensor ops: extra threads only contend for the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_staged_svdpp_run_keeps_frozen_groups_and_recommends(tmp_path, one_thread):
    cfg = composed(
        "experiment=ratings_synthetic",
        "model=svdpp",
        "model.n_factors=4",
        "data.n_ratings=2000",
        "plan.stages.all.epochs=1",
        "plan.stages.all.freeze_to=-2",
        "trainer.enable_progress_bar=false",
    )
    train(cfg, tmp_path)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the start train() builds, in the same order
    data = build(cfg.data)
    start = build(cfg.model, **data.model_kwargs())
    trained = load_trained(tmp_path, "last")
    after = trained.model
    for name in ("user_factors", "item_factors"):  # the frozen group, embeddings
        assert torch.equal(getattr(after, name).weight, getattr(start, name).weight)
    for name in ("implicit", "user_bias", "item_bias"):  # the trained groups moved
        assert not torch.equal(getattr(after, name).weight, getattr(start, name).weight)
    assert torch.equal(after.rated_items, start.rated_items)
    user = int(data.user_ids[int(data.train_set.users[0]) - 1])
    top = recommend(trained, user, 5)
    assert len(top) == 5 and all(a.score >= b.score for a, b in zip(top, top[1:]))
    assert len(similar(trained, int(data.item_ids[int(data.train_set.items[0]) - 1]), 3)) == 3
    assert "Learned item bias" in (tmp_path / "interpretation" / "interpretation.md").read_text()
