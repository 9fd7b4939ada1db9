"""A stage's ``wd`` as a mapping from layer-group name: applied per group, validated, logged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stagetune.engine.groups import LayerGroup, param_groups
from stagetune.engine.optim import Optim
from stagetune.engine.plan import Plan, Stage, StagePlan
from stagetune.engine.weight_decay import group_wds, recorded_wd
from stagetune.errors import ConfigError


def two_groups() -> list[LayerGroup]:
    return [LayerGroup("biases", [nn.Linear(2, 2)]), LayerGroup("factors", [nn.Linear(2, 2)])]


def test_mapping_sets_each_group_and_others_take_optim_wd():
    stage = Stage(freeze_to=0, lr=1e-3, wd={"biases": 0.5})
    assert stage.group_wds(["biases", "factors"], 0.01) == {"biases": 0.5, "factors": 0.01}
    assert Stage(freeze_to=0, lr=1e-3, wd=0.2).group_wds(["biases", "factors"], 0.01) == {"biases": 0.2, "factors": 0.2}


def test_param_groups_carry_each_groups_wd():
    groups = two_groups()
    pg = param_groups(groups, [0, 1], 1e-3, {"biases": 0.5, "factors": 0.01}, bias_wd=True)
    assert {g["name"]: g["wd"] for g in pg} == {"biases": 0.5, "factors": 0.01}


def test_unknown_group_is_a_config_error_naming_the_groups():
    plan = Plan(stages={"one": Stage(freeze_to=0, lr=1e-3, wd={"mlp": 0.1})})
    with pytest.raises(ConfigError, match=r"plan\.stages\.one\.wd\.mlp.*biases.*factors"):
        plan.check_groups(2, names=["biases", "factors"])


@pytest.mark.parametrize("bad", [-0.1, "x", float("nan")])
def test_bad_value_is_a_config_error_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"s\.wd\.biases"):
        Stage(freeze_to=0, lr=1e-3, wd={"biases": bad}).check("s")


def test_stage_row_logs_wd_per_group():
    callback = StagePlan(Plan(stages={"one": Stage(freeze_to=0, lr=1e-3, wd={"factors": 0.3})}), Optim(wd=0.01))
    callback.groups = two_groups()
    assert callback.describe(0, 0)["wd"] == {"biases": 0.01, "factors": 0.3}


def test_optimizer_gets_the_converted_wd_per_group():
    from stagetune.engine.optim import build_optimizer

    pg = param_groups(two_groups(), [0, 1], 1e-3, {"biases": 0.5, "factors": 0.01}, bias_wd=True)
    opt = build_optimizer(pg, Optim(name="adam", wd_kind="l2", wd=0.0))
    assert [g["weight_decay"] for g in opt.param_groups] == [1.0, 0.02]
    assert isinstance(opt, torch.optim.Optimizer)


def test_config_override_takes_a_per_group_mapping():
    from stagetune.config import plan_of, validate
    from tests.helpers.configs import composed

    cfg = validate(composed("plan=fit_one_cycle", "plan.stages.all.wd={embeddings: 0.1, biases: 0.0}"))
    stage = plan_of(cfg).ordered[0]
    assert stage.group_wds(["embeddings", "biases"], 0.01) == {"embeddings": 0.1, "biases": 0.0}


def test_hparams_carry_one_wd_per_named_group():
    from stagetune.runs.hparams import stage_hparams

    plan = Plan(stages={"one": Stage(freeze_to=0, lr=1e-3, wd={"biases": 0.5})})
    out = stage_hparams(plan.views(["factors", "biases"], 0.01))
    assert out["plan.stages.one.wd.biases"] == 0.5 and "plan.stages.one.wd" not in out


@pytest.mark.parametrize(
    "wd, names, recorded, per_group",
    [
        (None, ["a", "b"], 0.01, {"a": 0.01, "b": 0.01}),
        (0.3, ["a", "b"], 0.3, {"a": 0.3, "b": 0.3}),
        ({"b": 0.5}, ["a", "b"], {"a": 0.01, "b": 0.5}, {"a": 0.01, "b": 0.5}),
        ({"b": 0.5}, None, {"b": 0.5}, {"a": 0.01, "b": 0.5}),
    ],
)
def test_a_stage_records_its_wd_as_one_number_or_per_named_group(wd, names, recorded, per_group):
    assert recorded_wd(wd, names, 0.01) == recorded
    assert group_wds(wd, ["a", "b"], 0.01) == per_group
