"""Layer groups from parameter-name patterns: any model split in config, every parameter in one group."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from stagetune.build import build
from stagetune.engine.groups import check_partition, groups_by_pattern, param_groups, set_trainable
from stagetune.engine.plan import Stage
from stagetune.errors import ConfigError
from tests.helpers.plans import fit
from tests.tiny import TinyData, UngroupedNet

PATTERNS = {"body_early": "conv1|bn1|layer1", "body_late": "layer3", "head": "fc|scale"}


def named(model, group) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in group.parameters()]


def test_patterns_split_every_parameter_into_the_named_groups_in_order():
    model = UngroupedNet()
    groups = groups_by_pattern(model, PATTERNS)
    check_partition(model, groups)
    assert [g.name for g in groups] == ["body_early", "body_late", "head"]
    assert named(model, groups[0]) == ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "layer1.0.weight", "layer1.0.bias"]
    assert named(model, groups[1]) == ["layer3.0.weight", "layer3.0.bias"]
    assert sorted(named(model, groups[2])) == ["fc.bias", "fc.weight", "scale"]
    assert groups[0].norm_layers() == [model.bn1]
    assert groups[2].tensors == ((model, "scale"),), "a tensor on the model itself is held alone, not the whole model"


def test_a_pattern_names_whole_modules_not_prefixes_of_their_names():
    model = UngroupedNet()
    with pytest.raises(ConfigError, match="matches no parameter name"):
        groups_by_pattern(model, {"early": "conv", "rest": ".*"})


def test_a_pattern_group_splits_weight_decay_as_module_groups_do():
    model = UngroupedNet()
    groups = groups_by_pattern(model, PATTERNS)
    trainable = set_trainable(groups, -1, train_bn=False)
    pg = {g["name"]: g for g in param_groups(groups, trainable, 1e-3, wd=0.1)}
    assert set(pg) == {"head", "head/no_wd"}
    assert {id(p) for p in pg["head"]["params"]} == {id(model.fc.weight), id(model.scale)}
    assert [id(p) for p in pg["head/no_wd"]["params"]] == [id(model.fc.bias)]


@pytest.mark.parametrize(
    "patterns,key,fragment",
    [
        (
            {"early": "conv1|bn1", "head": "fc"},
            "model.groups",
            "5 parameter(s) match no pattern: scale, layer1.0.weight, layer1.0.bias, layer3.0.weight, layer3.0.bias; each must match exactly one",
        ),
        ({"a": "conv1|bn1|layer1|layer3", "b": "layer.*", "c": "fc|scale"}, "model.groups", "4 parameter(s) match several patterns: layer1.0.weight"),
        ({"a": ".*", "b": "decoder"}, "model.groups.b", "matches no parameter name (the names look like 'scale')"),
        ({"a": ".*", "b": "["}, "model.groups.b", "not a regular expression"),
        ({}, "model.groups", "one or more layer groups"),
    ],
)
def test_a_bad_split_is_one_config_line_naming_the_parameters_and_the_patterns(patterns, key, fragment):
    with pytest.raises(ConfigError) as err:
        groups_by_pattern(UngroupedNet(), patterns)
    assert err.value.key == key and fragment in str(err.value) and "\n" not in str(err.value)
    if key == "model.groups" and patterns:
        assert str(err.value).startswith(f"model.groups={patterns}")


def test_groups_in_config_split_a_model_of_the_users_and_a_frozen_stage_trains_only_the_head():
    node = OmegaConf.create({"_target_": "tests.tiny.UngroupedNet", "n_in": 6, "groups": PATTERNS})
    model = build(node)
    assert [g.name for g in model.layer_groups()] == list(PATTERNS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, TinyData(), Stage("frozen", 1, freeze_to=-1, lr=1e-2, train_bn=False), batches=3)
    after = dict(model.named_parameters())
    head = {"fc.weight", "fc.bias", "scale"}
    assert all(torch.equal(before[n], after[n]) for n in before if n not in head), "a frozen parameter moved"
    assert all(not torch.equal(before[n], after[n]) for n in head)


def test_groups_null_keeps_the_models_own_split():
    from tests.tiny import TinyNet

    model = build(OmegaConf.create({"_target_": "tests.tiny.TinyNet", "groups": None}))
    assert isinstance(model, TinyNet) and [g.name for g in model.layer_groups()] == ["body_early", "body_late", "head"]


def test_a_model_regrouped_by_patterns_trains_without_the_feature_cache():
    """ResNet34's features() run its own three groups: other groups would cache the wrong prefix."""
    from types import SimpleNamespace

    from stagetune.engine.cache import inexact_reason
    from stagetune.engine.plan import Plan, StagePlan

    node = OmegaConf.create(
        {"_target_": "stagetune.vision.models.ResNet34Classifier", "n_classes": 3, "weights": None, "groups": {"body": "body", "head": "head"}}
    )
    model = build(node)
    plan = StagePlan(Plan(stages={"frozen": Stage("frozen", 1, freeze_to=-1, lr=1e-2, train_bn=False)}))
    plan.groups = model.layer_groups()
    reason = inexact_reason(SimpleNamespace(world_size=1, datamodule=SimpleNamespace(augment=False)), model, plan.stages[0], plan.layer_groups)
    assert reason == "its layer groups come from model.groups patterns, which its features()/forward_from() do not follow"
