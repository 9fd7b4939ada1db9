"""Rating models: the forward formula, the range, the unknown index, the layer groups."""

import math

import pytest
import torch

from stagetune.collab.models import CollabNN, DotBias, embedding_width
from stagetune.engine.optim import check_sparse_training
from stagetune.errors import ConfigError


def set_weights(model: DotBias, uf, itf, ub, ib) -> None:
    with torch.no_grad():
        model.user_factors.weight[1:] = torch.tensor(uf)
        model.item_factors.weight[1:] = torch.tensor(itf)
        model.user_bias.weight[1:, 0] = torch.tensor(ub)
        model.item_bias.weight[1:, 0] = torch.tensor(ib)


def test_dot_bias_forward_matches_hand_computation():
    model = DotBias(n_users=2, n_items=2, n_factors=2, y_range=(0.0, 5.5))
    set_weights(model, [[1.0, 2.0], [0.5, -1.0]], [[0.3, -0.2], [1.0, 1.0]], [0.1, -0.4], [0.25, 0.0])
    # user 1, item 2: u.v = 1*1 + 2*1 = 3, + b_u 0.1 + b_i 0.0 = 3.1 -> sigmoid(3.1) * 5.5
    # user 2, item 1: u.v = 0.15 + 0.2 = 0.35, - 0.4 + 0.25 = 0.2 -> sigmoid(0.2) * 5.5
    pred = model(torch.tensor([1, 2]), torch.tensor([2, 1]))
    expected = [5.5 / (1 + math.exp(-3.1)), 5.5 / (1 + math.exp(-0.2))]
    assert pred.tolist() == pytest.approx(expected, abs=1e-6)


def test_global_mean_offset_makes_unknown_ids_predict_the_mean_and_known_biases_count():
    model = DotBias(n_users=2, n_items=2, n_factors=2, y_range=(0.0, 5.5), global_mean=3.53)
    set_weights(model, [[1.0, 2.0], [0.5, -1.0]], [[0.3, -0.2], [1.0, 1.0]], [0.1, -0.4], [0.25, 0.0])
    pred = model(torch.tensor([0, 0, 2]), torch.tensor([0, 1, 0]))
    offset = math.log(3.53 / 5.5 / (1 - 3.53 / 5.5))
    assert pred[0].item() == pytest.approx(3.53, abs=1e-5)  # neither known: the global mean
    assert pred[1].item() == pytest.approx(5.5 / (1 + math.exp(-(0.25 + offset))), abs=1e-5)  # item bias only
    assert pred[2].item() == pytest.approx(5.5 / (1 + math.exp(-(-0.4 + offset))), abs=1e-5)  # user bias only


def test_unknown_row_stays_zero_through_training_steps():
    model = DotBias(n_users=3, n_items=3, n_factors=4, global_mean=3.0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        loss = (model(torch.tensor([0, 1, 2]), torch.tensor([1, 0, 3])) - 5).pow(2).mean()
        opt.zero_grad(), loss.backward(), opt.step()
    for emb in (model.user_factors, model.item_factors, model.user_bias, model.item_bias):
        assert emb.weight[0].abs().max().item() == 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: DotBias(n_users=5, n_items=7, n_factors=3, y_range=(1.0, 5.0)),
        lambda: CollabNN(n_users=5, n_items=7, layers=[8, 4], y_range=(1.0, 5.0)),
    ],
)
def test_predictions_stay_inside_y_range_even_for_huge_weights(make):
    model = make().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 50)
    users, items = torch.randint(0, 6, (500,)), torch.randint(0, 8, (500,))
    pred = model(users, items)
    assert pred.min().item() >= 1.0 and pred.max().item() <= 5.0


@pytest.mark.parametrize("bad", [[5.0, 0.0], [3.0, 3.0], [0.0, float("inf")], [1.0]])
def test_bad_y_range_is_a_config_error_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"^model\.y_range="):
        DotBias(n_users=2, n_items=2, y_range=bad)


def test_collab_nn_architecture_and_layer_groups():
    model = CollabNN(n_users=943, n_items=1682, layers=[100, 50])
    assert model.user_factors.embedding_dim == embedding_width(944) == 74
    assert model.item_factors.embedding_dim == embedding_width(1683) == 103
    kinds = [type(m).__name__ for m in model.mlp]
    assert kinds == ["Linear", "ReLU", "BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Linear"]
    assert model.mlp[0].bias is None and model.mlp[-1].out_features == 1
    assert [g.name for g in model.layer_groups()] == ["embeddings", "mlp"]
    assert [g.name for g in DotBias(n_users=2, n_items=2).layer_groups()] == ["embeddings", "biases"]
    with pytest.raises(ConfigError, match=r"^model\.layers="):
        CollabNN(n_users=2, n_items=2, layers=[0])


def test_sparse_embeddings_refuse_several_processes():
    model = DotBias(n_users=3, n_items=4, n_factors=2, sparse=True)
    with pytest.raises(ConfigError, match="^model.sparse=True"):
        check_sparse_training(model, world_size=2, gradient_clip_val=None)
    check_sparse_training(model, world_size=1, gradient_clip_val=None)
    check_sparse_training(DotBias(n_users=3, n_items=4, n_factors=2), world_size=2, gradient_clip_val=1.0)
    assert model.user_factors.sparse and model.item_bias.sparse
