"""The ready sweep configs compose into valid runs; the Optuna one runs trials and is reported."""

from __future__ import annotations

import csv
import itertools

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from stagetune.app import conf_dir
from stagetune.config import validate
from tests.helpers.sweeps import TINY, run_module


def composed(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def grid_points(cfg) -> list[list[str]]:
    params = cfg.hydra.sweeper.params
    axes = [[f"{key}={v}" for v in str(values).split(",")] for key, values in params.items()]
    return [list(p) for p in itertools.product(*axes)]


@pytest.mark.parametrize(
    ("sweep", "base", "size"),
    [("wd_lr", ["experiment=ratings_synthetic"], 6), ("wd_lr_vision", ["experiment=ratings_synthetic", "plan=fine_tune"], 9)],
)
def test_grid_sweeps_compose_into_valid_runs(sweep, base, size):
    cfg = composed(*base, f"sweep={sweep}")
    points = grid_points(cfg)
    assert len(points) == size
    assert set(cfg.hydra.sweeper.params) == {"optim.wd", "plan.lr"}
    for point in points:
        job = composed(*base, f"sweep={sweep}", *point)
        with open_dict(job):
            del job["hydra"]
        run = validate(job)
        assert float(run.optim.wd) == float(point[0].split("=")[1])
        assert float(run.plan.lr) == float(point[1].split("=")[1])


def test_wd_l2_sweep_spans_four_decades_of_l2_wd_and_keeps_only_the_last_epoch():
    points = grid_points(composed("experiment=movielens", "sweep=wd_l2"))
    wds = [float(p[0].split("=")[1]) for p in points]
    assert max(wds) / min(wds) >= 1e4 and wds == sorted(wds)
    for point in points:
        job = composed("experiment=movielens", "sweep=wd_l2", *point)
        with open_dict(job):
            del job["hydra"]
        run = validate(job)
        assert run.optim.wd_kind == "l2" and float(run.optim.wd) == float(point[0].split("=")[1])
        assert run.data._target_.endswith("MovieLens") and run.data.path is None  # the bundled ML-100k
        assert run.checkpoint.every_n_epochs == run.plan.stages.all.epochs  # the chosen checkpoint is the last epoch's


def test_digits_finetune_sweep_is_a_grid_of_valid_runs_ranked_on_validation():
    base = ["experiment=digits_transfer", "sweep=digits_finetune"]
    cfg = composed(*base)
    params = cfg.hydra.sweeper.params
    assert dict(params) == {
        "plan.stages.frozen.train_bn": "true,false",
        "plan.stages.unfrozen.epochs": "4,8",
        "plan.stages.unfrozen.lr": "[2e-5,2e-3],[2e-4,2e-3]",
        "seed": "0,1,2",
    }
    parsed = {o.get_key_element(): o for o in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])}
    assert list(parsed.pop("seed").sweep_iterator()) == [0, 1, 2], "each cell on the seeds its mean is taken over"
    axes = [[(key, text, value) for text, value in zip(o.sweep_string_iterator(), o.sweep_iterator())] for key, o in parsed.items()]
    points = list(itertools.product(*axes))
    assert len(points) == 8
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        jobs = [compose("train", overrides=[*base, *(f"{key}={text}" for key, text, _ in point)]) for point in points]
    for point, job in zip(points, jobs):
        assert (job.metric, job.metric_mode) == ("val/acc", "max"), "every job is judged on the validation split"
        stages = validate(job).plan.stages
        chosen = {key: value for key, _, value in point}
        assert stages.frozen.train_bn is chosen["plan.stages.frozen.train_bn"]
        assert stages.unfrozen.epochs == chosen["plan.stages.unfrozen.epochs"]
        assert [float(x) for x in stages.unfrozen.lr] == chosen["plan.stages.unfrozen.lr"]


def test_optuna_sweep_searches_log_uniform_wd_and_lr_in_the_metric_direction():
    cfg = composed("experiment=ratings_synthetic", "sweep=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "minimize"
    assert dict(sweeper.params) == {"optim.wd": "tag(log, interval(1e-4, 1e-1))", "plan.lr": "tag(log, interval(1e-4, 1e-1))"}
    cfg = composed("experiment=ratings_synthetic", "sweep=optuna", "metric_mode=max")
    assert OmegaConf.select(cfg, "hydra.sweeper.direction") == "maximize"


def test_optuna_runs_two_trials_and_reports_them(tmp_path):
    out = tmp_path / "sweep"
    done = run_module("stagetune", "-m", *TINY, "sweep=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "completed"]
    for row in rows:
        assert 1e-4 <= float(row["optim.wd"]) <= 1e-1 and 1e-4 <= float(row["plan.lr"]) <= 1e-1
    results = OmegaConf.load(out / "optimization_results.yaml")
    assert results.best_value == pytest.approx(min(float(r["val/rmse best"]) for r in rows), rel=1e-3)
