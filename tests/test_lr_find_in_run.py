"""``lr=find`` inside a run: the range test runs as each such stage starts, and the run records the rate chosen."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stagetune.app import conf_dir
from stagetune.config import validate
from stagetune.engine.lr_suggest import SUGGESTIONS, RangeTest, Suggest
from stagetune.errors import ConfigError, StagetuneError
from stagetune.runs.run import train
from tests.helpers.cli import ROOT, run_cli

TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny", "plan.find.steps=30", "plan.find.end_lr=100"]


def compose_run(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


def recorded_curve(path) -> RangeTest:
    data = json.loads(path.read_text())
    return RangeTest(data["stage"], data["groups"], data["lrs"], data["losses"], data["smoothed"], data["diverged"], Suggest(data["suggest"]))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_plan_lr_find_tests_each_stage_as_it_starts_and_records_the_suggestion(tmp_path):
    train(compose_run("plan.lr=find"), tmp_path)
    stages = json.loads((tmp_path / "metrics.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["frozen", "unfrozen"]
    for stage in stages:
        curve = recorded_curve(tmp_path / f"lr_find-{stage['stage']}.json")
        lr = SUGGESTIONS[Suggest.valley](*curve.window())
        assert stage["lr_found"] == lr and stage["lr_suggest"] == "valley"
        assert 1e-7 <= lr <= 100 and curve.lrs[0] == pytest.approx(1e-7) and len(curve.lrs) <= 30
        assert max(stage["lr"].values()) == pytest.approx(lr)
        assert (tmp_path / f"lr_find-{stage['stage']}.png").read_bytes()[:4] == b"\x89PNG"
    frozen, unfrozen = stages
    assert frozen["lr"] == {"head": pytest.approx(frozen["lr_found"])}
    # fine_tune's slice(lr/200, lr/2): the shape is kept, the range test sets its top
    assert unfrozen["lr"]["body_early"] == pytest.approx(unfrozen["lr"]["head"] / 100)
    assert recorded_curve(tmp_path / "lr_find-unfrozen.json").groups == pytest.approx({"body_early": 0.01, "body_late": 0.1, "head": 1.0})
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["StagePlan"]
    reached = {s["stage"]: s["lr_found"] for s in stages[: len(saved["history"])]}
    assert saved["found"] == reached and "frozen" in reached, "a resumed run keeps the rates found, not a new test"
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    assert "lr_find/unfrozen/smoothed_loss" in events.Tags()["scalars"] and "lr_find/frozen/loss_vs_lr" in events.Tags()["images"]


def test_one_stage_can_find_while_the_others_keep_their_rate(tmp_path):
    train(compose_run("plan.stages.unfrozen.lr=find", "plan.find.suggest=minimum"), tmp_path)
    frozen, unfrozen = json.loads((tmp_path / "metrics.json").read_text())["stages"]
    assert frozen["lr"] == {"head": pytest.approx(1e-2)} and "lr_found" not in frozen
    curve = recorded_curve(tmp_path / "lr_find-unfrozen.json")
    assert unfrozen["lr_found"] == SUGGESTIONS[Suggest.minimum](*curve.window())
    assert list(unfrozen["lr"].values()) == pytest.approx([unfrozen["lr_found"]] * 3), "find alone: one rate for every group"
    assert not (tmp_path / "lr_find-frozen.json").exists()


def test_a_flat_curve_stops_a_find_run_in_one_line(tmp_path):
    # the whole data set in every batch, at rates too small to move the weights: the loss never changes
    flat = ["plan.lr=find", "plan.find.start_lr=1e-12", "plan.find.end_lr=1e-11", "data.batch_size=64"]
    with pytest.raises(StagetuneError, match=r"plan\.stages\.frozen\.lr=find: the loss curve is flat") as err:
        train(compose_run(*flat), tmp_path)
    assert "\n" not in str(err.value)
    assert json.loads((tmp_path / "lr_find-frozen.json").read_text())["suggestions"] == dict.fromkeys(rule.value for rule in Suggest)


def test_find_settings_are_checked_before_the_run(tmp_path):
    with pytest.raises(ConfigError, match=r"plan\.find\.suggest"):
        validate(compose_run("plan.lr=find", "plan.find.suggest=fastest"))
    with pytest.raises(ConfigError, match=r"plan\.stages\.unfrozen\.lr.*find cannot be mixed"):
        validate(compose_run("plan.stages.unfrozen.lr=[1e-4,find]"))


def test_under_ddp_rank_0_tests_and_every_rank_trains_at_its_rate(tmp_path):
    # rank 0's half of the random data barely learns in 30 steps: a short average (beta 0.6) lets its fall show
    dumps = tmp_path / "dumps"
    out = run_cli(
        *TINY,
        "trainer=ddp_cpu",
        "plan.stages.unfrozen.lr=find",
        "plan.find.beta=0.6",
        "logger=none",
        "+callbacks.dump._target_=tests.tiny.StateDump",
        f"+callbacks.dump.out={dumps}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")]
    stages = json.loads((run / "metrics.json").read_text())["stages"]
    assert [s["stage"] for s in stages if "lr_found" in s] == ["unfrozen"]
    assert out.stderr.count("lr=find:") == 1, "rank 0 alone runs the range test, when the stage starts mid-fit"
    last = max(int(p.stem.split("epoch")[1]) for p in dumps.glob("rank0-*.pt"))
    rank0, rank1 = (torch.load(dumps / f"rank{r}-epoch{last}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the ranks trained at the same rates"
