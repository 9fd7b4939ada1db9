import math

import pytest

from stagetune.engine.groups import LayerGroup, check_partition, param_groups, set_trainable
from stagetune.engine.learning_rate import slice_lrs
from tests.tiny import TinyNet


def test_slice_over_three_groups_is_geometric():
    assert slice_lrs([1e-5, 1e-3], 3) == pytest.approx([1e-5, 1e-4, 1e-3], rel=1e-12)


def test_slice_over_four_groups():
    lrs = slice_lrs([1e-6, 1e-3], 4)
    assert lrs == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3], rel=1e-12)
    assert all(b / a == pytest.approx(10) for a, b in zip(lrs, lrs[1:]))


def test_single_high_end_gives_tenth_to_earlier_groups():
    assert slice_lrs([1e-3], 3) == pytest.approx([1e-4, 1e-4, 1e-3])


def test_number_gives_every_group_the_same_rate():
    assert slice_lrs(3e-3, 4) == [3e-3] * 4


def test_slice_over_one_group_is_the_high_end():
    assert slice_lrs([1e-5, 1e-3], 1) == [1e-3]
    assert slice_lrs([1e-3], 1) == [1e-3]


def test_partition_detects_missing_and_shared_parameters():
    net = TinyNet()
    check_partition(net, net.layer_groups())
    with pytest.raises(ValueError, match="in no layer group"):
        check_partition(net, net.layer_groups()[:2])
    groups = net.layer_groups() + [LayerGroup("again", (net.head,))]
    with pytest.raises(ValueError, match="both layer groups"):
        check_partition(net, groups)


def test_freeze_to_minus_one_trains_only_the_head_and_bn():
    net = TinyNet()
    groups = net.layer_groups()
    trainable = set_trainable(groups, -1, train_bn=True)
    assert trainable == [2]
    bn = net.early[1]
    assert all(p.requires_grad for p in bn.parameters())
    assert not net.early[0].weight.requires_grad
    assert not net.late[0].weight.requires_grad
    assert net.head.weight.requires_grad
    set_trainable(groups, -1, train_bn=False)
    assert not any(p.requires_grad for p in bn.parameters())
    assert set_trainable(groups, 0, train_bn=False) == [0, 1, 2]
    assert all(p.requires_grad for p in net.parameters())
    assert set_trainable(groups, 1, train_bn=False) == [1, 2]


def test_param_groups_split_out_bias_and_bn_from_weight_decay():
    net = TinyNet()
    groups = net.layer_groups()
    trainable = set_trainable(groups, 0, train_bn=True)
    pg = param_groups(groups, trainable, [1e-5, 1e-3], wd=0.1)
    by_name = {g["name"]: g for g in pg}
    assert set(by_name) == {"body_early", "body_early/no_wd", "body_late", "body_late/no_wd", "head", "head/no_wd"}
    assert by_name["body_early"]["lr"] == pytest.approx(1e-5)
    assert by_name["body_late"]["lr"] == pytest.approx(1e-4)
    assert by_name["head/no_wd"]["lr"] == pytest.approx(1e-3)
    assert by_name["body_early"]["wd"] == 0.1
    assert by_name["body_early/no_wd"]["wd"] == 0.0
    no_wd = {id(p) for p in by_name["body_early/no_wd"]["params"]}
    assert no_wd == {id(net.early[0].bias), id(net.early[1].weight), id(net.early[1].bias)}
    assert sum(len(g["params"]) for g in pg) == len(list(net.parameters()))


def test_param_groups_with_bias_and_bn_decay_on():
    net = TinyNet()
    groups = net.layer_groups()
    trainable = set_trainable(groups, 0, train_bn=True)
    pg = param_groups(groups, trainable, 1e-3, wd=0.1, bn_wd=True, bias_wd=True)
    assert [g["name"] for g in pg] == ["body_early", "body_late", "head"]


def test_frozen_bn_trains_at_first_trainable_rate():
    net = TinyNet()
    groups = net.layer_groups()
    trainable = set_trainable(groups, -1, train_bn=True)
    pg = param_groups(groups, trainable, [2e-3], wd=0.01)
    names = {g["name"]: g for g in pg}
    assert set(names) == {"body_early/frozen_bn/no_wd", "head", "head/no_wd"}
    assert names["body_early/frozen_bn/no_wd"]["lr"] == pytest.approx(2e-3)
    assert {id(p) for p in names["body_early/frozen_bn/no_wd"]["params"]} == {id(p) for p in net.early[1].parameters()}
    assert math.isclose(names["head"]["lr"], 2e-3)
