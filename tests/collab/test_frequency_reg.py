"""model.freq_wd: the loss trained on is MSE + wd * sum_rows count(row)/N * ||row||^2, dense and sparse."""

import numpy as np
import pytest
import torch

from stagetune.collab.data import SyntheticRatings
from stagetune.collab.models import DotBias
from stagetune.errors import ConfigError

WD = 0.3


def tiny() -> SyntheticRatings:
    data = SyntheticRatings(n_users=6, n_items=7, n_ratings=25, seed=3)
    data.setup()
    return data


def by_hand(model: DotBias, data: SyntheticRatings) -> float:
    """The formula written out with numpy: counts from the training part, N its size."""
    train = data.train_set
    u, i, r = train.users.numpy(), train.items.numpy(), train.ratings.numpy().astype(np.float64)
    P, Q = (t.weight.detach().numpy().astype(np.float64) for t in (model.user_factors, model.item_factors))
    bu, bi = (t.weight.detach().numpy()[:, 0].astype(np.float64) for t in (model.user_bias, model.item_bias))
    score = (P[u] * Q[i]).sum(1) + bu[u] + bi[i] + float(model.offset)
    mse = np.mean((5.5 / (1 + np.exp(-score)) - r) ** 2)
    n = len(r)
    user_count = np.bincount(u, minlength=data.n_users + 1)
    item_count = np.bincount(i, minlength=data.n_items + 1)
    penalty = (user_count / n * ((P**2).sum(1) + bu**2)).sum() + (item_count / n * ((Q**2).sum(1) + bi**2)).sum()
    return mse + WD * penalty


@pytest.mark.parametrize("sparse", [False, True])
def test_training_loss_over_the_training_part_is_the_count_weighted_formula(sparse):
    data = tiny()
    torch.manual_seed(0)
    model = DotBias(**data.model_kwargs(), n_factors=3, freq_wd=WD, sparse=sparse)
    with torch.no_grad():  # weights big enough that the penalty matters next to the MSE
        for table in (model.user_factors, model.item_factors, model.user_bias, model.item_bias):
            table.weight[1:] = torch.randn_like(table.weight[1:])
    train = data.train_set
    loss = model.training_step((train.users, train.items, train.ratings), 0)
    assert loss.item() == pytest.approx(by_hand(model, data), abs=1e-6)
    plain = DotBias(**data.model_kwargs(), n_factors=3, sparse=sparse)
    plain.load_state_dict(model.state_dict())
    assert plain.training_step((train.users, train.items, train.ratings), 0).item() < loss.item() - 0.1


def test_sparse_mode_gives_gradients_only_to_the_rows_a_batch_used():
    data = tiny()
    model = DotBias(**data.model_kwargs(), n_factors=3, freq_wd=WD, sparse=True)
    train = data.train_set
    batch = (train.users[:3], train.items[:3], train.ratings[:3])
    model.training_step(batch, 0).backward()
    for table, used in ((model.user_factors, batch[0]), (model.user_bias, batch[0]), (model.item_factors, batch[1]), (model.item_bias, batch[1])):
        grad = table.weight.grad.coalesce()
        assert grad.is_sparse
        assert set(grad.indices()[0].tolist()) == set(used.tolist())


def test_negative_freq_wd_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^model\.freq_wd=-1"):
        DotBias(n_users=2, n_items=2, freq_wd=-1.0)
