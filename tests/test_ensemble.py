"""Ensembles: ``stagetune-eval RUN1 RUN2 ...`` averages the runs' predictions on a split they share.

Three tiny ratings_synthetic runs (1,000 ratings) are trained once for the file: two seeds of the
same data, and one of other data that an ensemble must refuse. Two digits runs (16 px) check the
averaged class probabilities, in ``stagetune-eval`` and in ``stagetune-predict --ensemble``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from stagetune.commands import evaluate, predict, report
from stagetune.runs.trained import load_trained
from stagetune.vision.data import DigitsFile
from tests.helpers.runs import make_run, read_csv, run_main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RATINGS = ["experiment=ratings_synthetic", "data.n_users=50", "data.n_items=40", "data.batch_size=64", "plan.stages.all.epochs=2"]
DIGITS = [
    "experiment=digits_scratch",
    "data.size=16",
    "data.train_per_class=2",
    "data.valid_pct=0.05",
    "data.test_pct=0.05",
    "data.batch_size=5",
    "plan.stages.frozen.epochs=1",
    "plan.stages.unfrozen.epochs=1",
]


@pytest.fixture(scope="module")
def ratings_runs(tmp_path_factory) -> list[Path]:
    return [make_run(tmp_path_factory.mktemp(f"seed{seed}"), *RATINGS, "data.n_ratings=1000", f"seed={seed}") for seed in (1, 2)]


@pytest.fixture(scope="module")
def other_data_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("other"), *RATINGS, "data.n_ratings=900")


@torch.no_grad()
def valid_predictions(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's predicted and true valid ratings, straight from its rebuilt model."""
    trained = load_trained(run)
    part = trained.datamodule.parts()[1]
    return trained.model(part.users, part.items), part.ratings


def test_the_ensemble_predicts_the_mean_of_its_members(ratings_runs, capsys):
    assert run_main(evaluate, *ratings_runs, "--split", "valid") == 0
    record = json.loads((ratings_runs[0] / "eval-valid-ensemble.json").read_text())
    (pred_1, ratings), (pred_2, _) = (valid_predictions(run) for run in ratings_runs)
    mean = (pred_1 + pred_2) / 2
    assert not torch.allclose(pred_1, pred_2, atol=1e-3)  # two seeds: the members differ
    assert record["metrics"]["val/rmse"] == pytest.approx(float((mean - ratings).pow(2).mean().sqrt()), abs=1e-6)
    assert record["metrics"]["val/mae"] == pytest.approx(float((mean - ratings).abs().mean()), abs=1e-6)
    for run, member in zip(ratings_runs, record["members"]):
        own = json.loads((run / "metrics.json").read_text())["valid"]
        assert Path(member["run"]).samefile(run)
        for key in ("val/rmse", "val/mae", "val/loss"):
            assert member["metrics"][key] == pytest.approx(own[key], abs=1e-5), key
    table = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["metric", "run", "1", "run", "2", "ensemble"] in table
    assert ["rmse", *(f"{m['metrics']['val/rmse']:.4f}" for m in record["members"]), f"{record['metrics']['val/rmse']:.4f}"] in table


def test_an_ensemble_never_replaces_an_eval_record(ratings_runs):
    first = ratings_runs[0]
    run_main(evaluate, first)
    run_main(evaluate, *ratings_runs)
    before = {p.name: p.read_bytes() for p in first.glob("eval-*.json")}
    assert {"eval-valid.json", "eval-valid-ensemble.json"} <= before.keys()
    assert run_main(evaluate, *ratings_runs, "--split", "test") == 0
    assert run_main(evaluate, *ratings_runs) == 0
    after = {p.name: p.read_bytes() for p in first.glob("eval-*.json")}
    assert {name: after[name] for name in before} == before
    valid_ensembles = sum("valid-ensemble" in name for name in before)
    assert set(after) - set(before) == {"eval-test-ensemble.json", f"eval-valid-ensemble-{valid_ensembles + 1}.json"}
    assert json.loads(after["eval-test-ensemble.json"])["metrics"].keys() == {"test/loss", "test/rmse", "test/mae"}


def test_runs_of_other_data_are_refused_in_one_line(ratings_runs, other_data_run, capsys):
    records = sorted(ratings_runs[0].glob("eval-*"))
    assert run_main(evaluate, ratings_runs[0], other_data_run) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "data.n_ratings is 900, not 1000" in err and "same data and splits" in err
    assert sorted(ratings_runs[0].glob("eval-*")) == records


def test_runs_that_differ_in_batch_size_and_y_range_only_are_averaged(ratings_runs, tmp_path):
    same_split = [o for o in RATINGS if not o.startswith("data.batch_size")]
    other = make_run(tmp_path / "other", *same_split, "data.n_ratings=1000", "data.batch_size=32", "model.y_range=[0.5,6.0]")
    assert run_main(evaluate, ratings_runs[0], other) == 0
    record = json.loads(sorted(ratings_runs[0].glob("eval-valid-ensemble*.json"), key=lambda p: p.stat().st_mtime)[-1].read_text())
    assert Path(record["members"][1]["run"]).samefile(other)


def test_a_checkpoint_file_is_refused_for_an_ensemble(ratings_runs, capsys):
    ckpt = next((ratings_runs[0] / "checkpoints").glob("*.ckpt"))
    assert run_main(evaluate, *ratings_runs, "--ckpt", ckpt) != 0
    assert "an ensemble reads each run's best or last checkpoint" in capsys.readouterr().err


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory) -> list[Path]:
    return [make_run(tmp_path_factory.mktemp(f"digits{seed}"), *DIGITS, f"seed={seed}") for seed in (1, 2)]


def test_image_runs_average_their_class_probabilities(digits_runs):
    assert run_main(evaluate, *digits_runs) == 0
    record = json.loads((digits_runs[0] / "eval-valid-ensemble.json").read_text())
    probs = []
    with torch.no_grad():
        for run in digits_runs:
            trained = load_trained(run)
            trained.datamodule.setup("validate")
            batches = list(trained.datamodule.val_dataloader())
            probs.append(torch.cat([trained.model(x).softmax(1) for x, _ in batches]))
            targets = torch.cat([y for _, y in batches])
    mean = torch.stack(probs).mean(0)
    assert not torch.allclose(probs[0], probs[1], atol=1e-3)
    assert record["metrics"]["val/acc"] == pytest.approx(float((mean.argmax(1) == targets).float().mean()), abs=1e-6)
    assert record["metrics"]["val/loss"] == pytest.approx(float(F.nll_loss(mean.log(), targets)), abs=1e-5)


def test_predict_averages_the_probabilities_of_the_ensembles_runs(digits_runs, digit_files, tmp_path):
    folder, _ = digit_files
    out = tmp_path / "pred.csv"
    assert run_main(predict, digits_runs[0], folder, "--ensemble", digits_runs[1], "--top-k", 5, "--out", out) == 0
    x = torch.stack([DigitsFile(16)(Image.open(folder / f"{n}.png")) for n in range(6)])
    with torch.no_grad():
        mean = torch.stack([load_trained(run).model(x).softmax(1) for run in digits_runs]).mean(0)
    rows = read_csv(out)
    names = load_trained(digits_runs[0]).model.class_names
    for row, p in zip(rows, mean):
        written = dict(pair.split(":") for pair in row["top_k"].split())
        assert {names[i]: float(v) for i, v in enumerate(p)} == pytest.approx({k: float(v) for k, v in written.items()}, abs=1e-4)


def test_predict_refuses_an_ensemble_of_other_data(digits_runs, ratings_runs, digit_files, tmp_path, capsys):
    folder, _ = digit_files
    assert run_main(predict, digits_runs[0], folder, "--ensemble", ratings_runs[0], "--out", tmp_path / "p.csv") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "same data and splits" in err
    assert not (tmp_path / "p.csv").exists()


def test_report_averages_each_recipes_seeds_on_valid(ratings_runs, tmp_path, capsys):
    sweep = tmp_path / "multirun"
    for job, (run, seed) in enumerate(zip(ratings_runs, (1, 2))):
        shutil.copytree(run, sweep / str(job))
        (sweep / str(job) / "overrides.yaml").write_text(f"- seed={seed}\n")
    assert run_main(report, sweep, "--ensemble") == 0
    (pred_1, ratings), (pred_2, _) = (valid_predictions(run) for run in ratings_runs)
    alone = [float((p - ratings).pow(2).mean().sqrt()) for p in (pred_1, pred_2)]
    ensemble = float(((pred_1 + pred_2) / 2 - ratings).pow(2).mean().sqrt())
    lines = (sweep / "ensembles.md").read_text().splitlines()
    header, row = lines[-3], lines[-1].strip("| ").split(" | ")
    assert header == "| seeds | val/rmse ensemble | val/rmse alone |"
    assert row[0] == "2" and float(row[1]) == pytest.approx(ensemble, rel=1e-3)
    mean, sd = (float(x) for x in row[2].split(" ± "))
    assert mean == pytest.approx(np.mean(alone), rel=1e-3) and sd == pytest.approx(np.std(alone, ddof=1), rel=0.05)
    assert "val/rmse ensemble" in capsys.readouterr().out


def test_report_ensemble_needs_a_recipe_with_two_seeds(ratings_runs, tmp_path, capsys):
    sweep = tmp_path / "multirun"
    shutil.copytree(ratings_runs[0], sweep / "0")
    (sweep / "0" / "overrides.yaml").write_text("- seed=1\n")
    assert run_main(report, sweep, "--ensemble") != 0
    assert "has two completed seeds" in capsys.readouterr().err
