"""The sweep report over hand-written run directories: train and valid curves against wd, and
recipes that differ only in seed reported as mean and sample standard deviation."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from stagetune.runs.sweep_report import Report


def fake_job(
    sweep: Path, name: str, overrides: dict[str, str], valid: float, train: float | None = None, test: float | None = None, status: str = "completed"
) -> None:
    """A run directory as a finished job leaves it: overrides.yaml and metrics.json."""
    job = sweep / name
    job.mkdir(parents=True)
    (job / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
    metrics = {"status": status, "metric": {"name": "val/rmse", "mode": "min", "best": valid, "last": valid}, "time_s": 1.0}
    if train is not None:
        metrics["train_eval"] = {"train_eval/rmse": train}
    if test is not None:
        metrics["test"] = {"test/rmse": test}
    (job / "metrics.json").write_text(json.dumps(metrics))


WD = {"1e-06": (1.02, 0.13), "0.0001": (0.92, 0.51), "0.01": (1.04, 1.05)}  # wd: (valid, train)


def test_wd_sweep_report_has_train_and_valid_curves_against_wd_in_wd_order(tmp_path):
    for i, (wd, (valid, train)) in enumerate(reversed(list(WD.items()))):
        fake_job(tmp_path, str(i), {"experiment": "movielens", "optim.wd": wd}, valid, train)
    report = Report(tmp_path)
    curves = report.curves("optim.wd")
    assert set(curves) == {"valid", "train"}
    assert [x for x, _ in curves["valid"]] == list(WD) == [x for x, _ in curves["train"]]
    assert [st.mean for _, st in curves["valid"]] == [v for v, _ in WD.values()]
    assert [st.mean for _, st in curves["train"]] == [t for _, t in WD.values()]
    assert all(st.std is None and st.n == 1 for _, st in curves["valid"])
    rows = list(csv.DictReader(report.csv().splitlines()))
    assert {r["optim.wd"]: float(r["train_eval/rmse"]) for r in rows} == {wd: t for wd, (_, t) in WD.items()}
    paths = report.write()
    assert [p.name for p in paths] == ["summary.csv", "summary.md", "summary.png"]  # no seeds: no groups.csv


SEEDS = {("1e-4", "0"): 0.91, ("1e-4", "1"): 0.93, ("1e-4", "2"): 0.95, ("1e-2", "0"): 1.00, ("1e-2", "1"): 1.04}


def seeded_sweep(sweep: Path) -> None:
    for i, ((wd, seed), valid) in enumerate(SEEDS.items()):
        fake_job(sweep, str(i), {"optim.wd": wd, "seed": seed}, valid, train=valid - 0.3, test=valid + 0.02)
    fake_job(sweep, "5", {"optim.wd": "1e-2", "seed": "2"}, math.nan, status="failed")


def test_jobs_differing_only_in_seed_are_one_recipe_with_mean_and_sample_std(tmp_path):
    seeded_sweep(tmp_path)
    report = Report(tmp_path)
    assert report.seeded()
    assert report.recipe_keys == ["optim.wd"]
    stats = {g.values["optim.wd"]: report.group_stats(g) for g in report.groups}
    for wd in ("1e-4", "1e-2"):
        values = [v for (w, _), v in SEEDS.items() if w == wd]
        got = stats[wd]
        assert got["val/rmse"].n == len(values)  # the failed seed is left out
        assert got["val/rmse"].mean == pytest.approx(statistics.mean(values))
        assert got["val/rmse"].std == pytest.approx(statistics.stdev(values))
        assert got["train_eval/rmse"].mean == pytest.approx(statistics.mean(values) - 0.3)
        assert got["test/rmse"].std == pytest.approx(statistics.stdev(values))
    assert report.best_group().values == {"optim.wd": "1e-4"}
    valid = dict(report.curves("optim.wd")["valid"])
    assert valid["1e-4"].mean == pytest.approx(0.93) and valid["1e-4"].std == pytest.approx(0.02)

    paths = report.write()
    rows = list(csv.DictReader((tmp_path / "groups.csv").open()))
    assert tmp_path / "groups.csv" in paths
    assert [(r["optim.wd"], r["seeds"]) for r in rows] == [("1e-4", "3/3"), ("1e-2", "2/3")]
    assert float(rows[1]["val/rmse mean"]) == pytest.approx(1.02)
    assert float(rows[1]["val/rmse std"]) == pytest.approx(statistics.stdev([1.00, 1.04]), rel=1e-3)
    md = (tmp_path / "summary.md").read_text()
    assert "best mean val/rmse (min) over 3 seeds: 0.93 ± 0.02 (optim.wd=1e-4)" in md
    assert "| 1e-4 | 3/3 | 0.93 ± 0.02 |" in md


def test_a_wd_x_lr_grid_swept_over_seeds_is_still_a_heatmap_of_the_means(tmp_path):
    for i, (wd, lr, seed) in enumerate((w, r, s) for w in ("0", "0.1") for r in ("1e-3", "1e-2") for s in ("0", "1")):
        fake_job(tmp_path, str(i), {"optim.wd": wd, "plan.lr": lr, "seed": seed}, 1.0 + i / 100)
    report = Report(tmp_path)
    assert report.grid_axes() == ("optim.wd", "plan.lr")
    assert len(report.groups) == 4
    assert report.group_stats(report.best_group())["val/rmse"].mean == pytest.approx(1.005)


def test_heatmap_text_contrasts_with_its_cell(tmp_path):
    for i, (wd, lr) in enumerate((w, r) for w in ("0", "0.1") for r in ("1e-3", "1e-2")):
        fake_job(tmp_path, str(i), {"optim.wd": wd, "plan.lr": lr}, 0.9 + i / 10)
    fig = Report(tmp_path)._heatmap("optim.wd", "plan.lr")
    ax = fig.axes[0]
    image = ax.images[0]
    for text in ax.texts:
        c, r = (round(v) for v in text.get_position())
        red, green, blue, _ = image.cmap(image.norm(image.get_array()[r, c]))
        luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
        assert (text.get_color() == "black") == (luminance > 0.45), (text.get_text(), luminance)
    assert {t.get_color() for t in ax.texts} == {"black", "white"}, "both ends of the colour scale appear"


def test_slices_and_numbers_sort_by_value_not_as_text():
    from stagetune.runs.sweep_report import _sort_key

    values = ["[0.0001,0.01]", "1e-05", "[1e-05,0.001]", "0.001", "cosine"]
    assert sorted(values, key=_sort_key) == ["1e-05", "[1e-05,0.001]", "[0.0001,0.01]", "0.001", "cosine"]


def test_a_sweeps_best_job_is_chosen_on_valid_whatever_the_test_numbers(tmp_path):
    chosen = []
    for k, tests in enumerate(((0.99, 0.80, 0.95), (0.70, 1.30, 0.60))):  # the same valid numbers, other test numbers
        sweep = tmp_path / str(k)
        for i, (wd, valid) in enumerate((("0", 0.95), ("0.01", 0.91), ("0.1", 0.97))):
            fake_job(sweep, str(i), {"optim.wd": wd}, valid, test=tests[i])
        best = Report(sweep).best_group()
        chosen.append(best.values)
        Report(sweep).write()
        assert "in job 1 " in (sweep / "summary.md").read_text()
    assert chosen == [{"optim.wd": "0.01"}, {"optim.wd": "0.01"}], "valid chose; test changed nothing"
