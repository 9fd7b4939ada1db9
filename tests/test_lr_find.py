"""The LR range test: a finite suggestion inside the range, its plot, record and TensorBoard curve."""

from __future__ import annotations

import json
import math

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stagetune.app import conf_dir
from stagetune.engine.lr_suggest import SUGGESTIONS, RangeTest, Suggest
from stagetune.errors import ConfigError
from stagetune.runs.range_test import run_range_test
from tests.helpers.sweeps import TINY


def lr_find_config(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("lr_find", overrides=list(overrides))


def test_range_test_on_the_ratings_model_suggests_a_finite_lr_and_writes_its_plot(tmp_path):
    cfg = lr_find_config(*TINY, "data.n_ratings=1500", "data.batch_size=32", "lr_find.steps=40")
    result = run_range_test(cfg, tmp_path)
    assert 5 <= len(result.lrs) <= 40 and len(result.lrs) == len(result.losses)
    assert result.lrs[0] == pytest.approx(1e-7)
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:])), "the LR grows every step"
    lr = result.suggested_lr()
    assert math.isfinite(lr) and 1e-7 < lr < 10
    assert lr == SUGGESTIONS[Suggest.valley](*result.window()), "valley by default, as fastai"
    assert result.groups == {"embeddings": 1.0, "biases": 1.0} and result.suggested_stage_lr() == lr

    assert (tmp_path / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((tmp_path / "lr_find.json").read_text())
    assert record["suggested_lr"] == pytest.approx(lr) and record["stage"] == "all"
    assert record["suggestions"] == pytest.approx({rule.value: result.suggestion(rule) for rule in Suggest})
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.value for e in events.Scalars("lr_find/lr")] == pytest.approx(result.lrs)
    assert "lr_find/loss_vs_lr" in events.Tags()["images"]


FINE_TUNE = [o for o in TINY if not o.startswith("plan.stages.all")] + ["plan=fine_tune", "lr_find.steps=8"]


def test_each_stage_trains_the_groups_its_plan_unfreezes_with_its_slice_shape(tmp_path):
    frozen = run_range_test(lr_find_config(*FINE_TUNE, "lr_find.stage=frozen"), tmp_path / "frozen")
    assert frozen.groups == {"biases": 1.0}
    unfrozen = run_range_test(lr_find_config(*FINE_TUNE, "lr_find.stage=unfrozen"), tmp_path / "unfrozen")
    assert unfrozen.groups == pytest.approx({"embeddings": 0.01, "biases": 1.0}), "slice [lr/200, lr/2]"
    lo, hi = unfrozen.suggested_stage_lr()
    assert lo == pytest.approx(hi / 100)
    with pytest.raises(ConfigError, match="lr_find.stage='missing': a stage of the plan: frozen, unfrozen"):
        run_range_test(lr_find_config(*FINE_TUNE, "lr_find.stage=missing"), tmp_path / "missing")


def test_the_command_offers_the_same_rules_as_a_run(tmp_path):
    result = run_range_test(lr_find_config(*FINE_TUNE, "lr_find.suggest=minimum"), tmp_path)
    assert result.suggest == Suggest.minimum and result.suggested_lr() == result.suggestion("minimum")
    with pytest.raises(ConfigError, match=r"lr_find\.suggest='fastest': one of valley, slide, minimum, steep"):
        run_range_test(lr_find_config(*FINE_TUNE, "lr_find.suggest=fastest"), tmp_path / "bad")


def curve(losses: list[float]) -> RangeTest:
    lrs = [1e-6 * 10 ** (k / 10) for k in range(len(losses))]
    return RangeTest("unfrozen", {"body": 0.01, "head": 1.0}, lrs, losses, losses, diverged=False)


def test_suggestions_on_a_known_curve():
    # flat, a steady fall from step 20 to 40 (fastest between 30 and 40), minimum at step 46, then up
    losses = [2.0] * 20 + [2.0 - 0.01 * k for k in range(10)] + [1.9 - 0.05 * k for k in range(11)] + [1.35] * 5 + [1.32] + [3.0] * 9
    result = curve(losses)
    lrs = result.lrs
    assert result.suggestion("minimum") == pytest.approx(lrs[46] / 10)
    assert lrs[30] <= result.suggestion("steep") <= lrs[40]
    # the longest falling run has 23 points and ends at step 46; fastai's index: 46 - 23 + int(23/3) + int(23/6)
    assert result.suggestion("valley") == pytest.approx(lrs[33])
    # walking down from the top, the slope 15 steps apart keeps changing until both ends lie on the first plateau
    assert result.suggestion("slide") == pytest.approx(lrs[5])
    assert result.suggested_lr() == result.suggestion("valley")
    lo, hi = result.suggested_stage_lr()
    assert hi == pytest.approx(result.suggested_lr()) and lo == pytest.approx(hi / 100)


def test_a_flat_or_short_curve_gives_no_suggestion():
    flat = curve([2.0 + 0.001 * math.sin(k) for k in range(50)])
    assert flat.suggestions() == dict.fromkeys(rule.value for rule in Suggest) and flat.suggested_stage_lr() is None
    assert "flat" in flat.why_none()
    short = curve([2.0, 1.5, math.nan, math.nan, math.nan, math.nan])
    assert short.suggested_lr() is None and "finite for 2 usable steps" in short.why_none()


def test_suggestions_ignore_the_loss_after_it_stops_being_finite():
    losses = [2.0 - 0.02 * k for k in range(30)] + [math.nan] * 10
    assert curve(losses).suggestion("minimum") == pytest.approx(curve(losses).lrs[29] / 10)
