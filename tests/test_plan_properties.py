"""Property tests of the plan and slice layer: valid plans give sane LRs, invalid ones one error type."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from stagetune.config import plan_of, typed
from stagetune.engine.plan import Plan
from stagetune.errors import ConfigError

rates = st.floats(min_value=1e-8, max_value=10.0, allow_nan=False, allow_infinity=False)


@st.composite
def learning_rates(draw):
    kind = draw(st.sampled_from(["number", "hi", "slice"]))
    if kind == "number":
        return draw(rates)
    if kind == "hi":
        return [draw(rates)]
    lo, hi = sorted([draw(rates), draw(rates)])
    return [lo, hi]


@st.composite
def valid_plans(draw):
    n_groups = draw(st.integers(1, 6))
    stages = {
        f"s{k}": {
            "epochs": draw(st.integers(1, 5)),
            "freeze_to": draw(st.integers(-n_groups, n_groups - 1)),
            "lr": draw(learning_rates()),
            "wd": draw(st.one_of(st.none(), st.floats(0, 1))),
            "schedule": draw(st.sampled_from(["one_cycle", "cosine", "constant"])),
            "pct_start": draw(st.floats(0.01, 0.99)),
        }
        for k in range(draw(st.integers(1, 4)))
    }
    return n_groups, stages


def build(n_groups: int, stages: dict) -> Plan:
    plan = plan_of(typed(OmegaConf.create({"plan": {"lr": 1e-3, "stages": stages}})))
    plan.check()
    plan.check_groups(n_groups)
    return plan


@settings(max_examples=200, deadline=None)
@given(valid_plans())
def test_every_valid_plan_gives_finite_positive_monotone_group_lrs(case):
    n_groups, stages = case
    plan = build(n_groups, stages)
    for index in range(len(plan.stages)):
        trainable = plan.trainable_groups(index, n_groups)
        lrs = plan.group_lrs(index, n_groups)
        assert len(lrs) == len(trainable) >= 1
        assert trainable[-1] == n_groups - 1, "the last group always trains"
        assert all(math.isfinite(lr) and lr > 0 for lr in lrs)
        assert all(a <= b * (1 + 1e-12) for a, b in zip(lrs, lrs[1:])), lrs


BAD_FIELDS = st.sampled_from(
    [
        ("epochs", st.integers(-3, 0)),
        ("lr", st.tuples(rates, rates).filter(lambda t: t[0] > t[1] * (1 + 1e-9)).map(list)),
        ("lr", st.floats(max_value=0.0, allow_nan=False)),
        ("lr", st.lists(rates, min_size=3, max_size=4)),
        ("lr", st.just(float("inf"))),
        ("wd", st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)),
        ("schedule", st.text(min_size=1, max_size=8).filter(lambda s: s not in ("one_cycle", "cosine", "constant"))),
        ("pct_start", st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0))),
        ("freeze_to", st.one_of(st.integers(3, 50), st.integers(-50, -4))),
    ]
)


@settings(max_examples=200, deadline=None)
@given(valid_plans(), BAD_FIELDS, st.data())
def test_every_invalid_plan_raises_the_config_error_and_nothing_else(case, bad, data):
    _, stages = case
    n_groups = 3
    for stage in stages.values():
        stage["freeze_to"] = max(-n_groups, min(stage["freeze_to"], n_groups - 1))
    field, values = bad
    victim = data.draw(st.sampled_from(sorted(stages)))
    stages[victim][field] = data.draw(values)
    try:
        build(n_groups, stages)
    except ConfigError as err:
        assert err.key.startswith("plan.stages.") and "\n" not in str(err)
    else:
        raise AssertionError(f"accepted {field}={stages[victim][field]!r}")
