"""One TensorBoard tag per layer group for the whole run, whatever its stage."""

import torch

from stagetune.engine.lr_logging import group_lrs, layer_group_tag


def test_frozen_and_unfrozen_body_group_share_one_tag():
    assert layer_group_tag("body_early/frozen_bn") == "lr/body_early"
    assert layer_group_tag("body_early/frozen_bn/no_wd") == "lr/body_early"
    assert layer_group_tag("body_early") == "lr/body_early"
    assert layer_group_tag("head/no_wd") == "lr/head"


def test_group_lrs_keys_are_the_same_before_and_after_unfreezing():
    w = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    frozen = torch.optim.SGD(
        [
            {"params": [w[0]], "name": "body_early/frozen_bn", "lr": 1e-4},
            {"params": [w[1]], "name": "head", "lr": 1e-2},
            {"params": [w[2]], "name": "head/no_wd", "lr": 1e-2},
        ]
    )
    unfrozen = torch.optim.SGD(
        [
            {"params": [w[0]], "name": "body_early", "lr": 1e-3},
            {"params": [w[1]], "name": "head", "lr": 1e-2},
        ]
    )
    assert set(group_lrs(frozen)) == set(group_lrs(unfrozen)) == {"lr/body_early", "lr/head"}
    assert group_lrs(unfrozen)["lr/body_early"] == 1e-3
