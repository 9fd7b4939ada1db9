"""Looking at trained runs again: ``stagetune-eval`` and ``stagetune-show`` on two tiny real runs.

A digits_scratch run at 16 px (ten training images, 5% of the digits for valid and for test) and a
ratings_synthetic run on 1,000 ratings are trained once for the file; the commands run as ``main(argv)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stagetune.commands import evaluate, show
from stagetune.runs import evaluation
from stagetune.runs.trained import load_trained
from stagetune.runs.views import training_batch
from tests.helpers.runs import make_run, run_main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    return make_run(
        tmp_path_factory.mktemp("digits"),
        "experiment=digits_scratch",
        "data.size=16",
        "data.train_per_class=2",
        "data.valid_pct=0.05",
        "data.test_pct=0.05",
        "data.batch_size=5",
        "plan.stages.frozen.epochs=1",
        "plan.stages.unfrozen.epochs=1",
    )


@pytest.fixture(scope="module")
def ratings_run(tmp_path_factory) -> Path:
    return make_run(
        tmp_path_factory.mktemp("ratings"),
        "experiment=ratings_synthetic",
        "data.n_users=50",
        "data.n_items=40",
        "data.n_ratings=1000",
        "data.batch_size=64",
        "plan.stages.all.epochs=2",
    )


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


@pytest.mark.parametrize("split,part", [("valid", "valid"), ("test", "test")])
def test_eval_of_the_best_checkpoint_equals_the_runs_own_metrics(digits_run, split, part, capsys):
    recorded = json.loads((digits_run / "metrics.json").read_text())[part]
    assert run_main(evaluate, digits_run, "--split", split) == 0
    result = json.loads((digits_run / f"eval-{split}.json").read_text())
    assert result["checkpoint"] == json.loads((digits_run / "metrics.json").read_text())["best"]["checkpoint"]
    assert result["metrics"].keys() == recorded.keys()
    for key, value in recorded.items():
        assert result["metrics"][key] == pytest.approx(value, abs=1e-6), key
    prefix = "val" if split == "valid" else "test"
    table = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert table[0] == ["metric", split]
    assert ["acc", f"{recorded[f'{prefix}/acc']:.4f}"] in table
    for picture in ("confusion", "top-losses"):
        assert (digits_run / f"eval-{split}-{picture}.png").stat().st_size > 0
    assert result["pictures"] == [f"eval-{split}-confusion.png", f"eval-{split}-top-losses.png"]


def test_a_second_eval_is_numbered_and_leaves_the_first_as_it_was(digits_run):
    run_main(evaluate, digits_run, "--ckpt", "last")
    first = {p.name: p.read_bytes() for p in digits_run.glob("eval-valid*")}
    assert run_main(evaluate, digits_run, "--ckpt", "last") == 0
    assert {p.name: p.read_bytes() for p in digits_run.glob("eval-valid*") if p.name in first} == first
    new = sorted(p.name for p in digits_run.glob("eval-valid*") if p.name not in first)
    n = max(int(name.split("-")[2].split(".")[0]) for name in new)
    assert new == [f"eval-valid-{n}-confusion.png", f"eval-valid-{n}-top-losses.png", f"eval-valid-{n}.json"]
    assert json.loads((digits_run / f"eval-valid-{n}.json").read_text())["checkpoint"] == "checkpoints/last.ckpt"


def test_eval_of_a_ratings_run_equals_its_metrics_and_draws_nothing(ratings_run):
    assert run_main(evaluate, ratings_run, "--split", "test") == 0
    recorded = json.loads((ratings_run / "metrics.json").read_text())["test"]
    result = json.loads((ratings_run / "eval-test.json").read_text())
    assert result["metrics"] == pytest.approx(recorded, abs=1e-6)
    assert result["pictures"] == [] and not list(ratings_run.glob("eval-test*.png"))


def test_eval_mistakes_are_one_line(digits_run, tmp_path, capsys):
    assert run_main(evaluate, digits_run, "--ckpt", "newest") == 1
    assert capsys.readouterr().err.strip() == ("stagetune-eval: error: --ckpt newest: use best, last or the path of a checkpoint file")
    assert run_main(evaluate, tmp_path) == 1
    assert "is not a stagetune run directory" in capsys.readouterr().err


def grid_size(n: int) -> tuple[int, int]:
    """Pixels of an image grid of ``n`` cells: 2.2 x 2.4 inches a cell, 0.4 for the title, at 100 dpi."""
    cols = -(-(n**0.5) // 1)
    rows = -(-n // cols)
    return int(220 * cols), int(240 * rows + 40)


def test_show_batch_draws_a_training_batch_with_its_labels(digits_run):
    assert run_main(show, digits_run, "batch", "-n", "4") == 0
    assert png_size(digits_run / "show-batch.png") == grid_size(4)


def test_show_results_and_confused_read_the_evaluated_split(digits_run, capsys):
    assert run_main(show, digits_run, "results", "-n", "6") == 0
    assert png_size(digits_run / "show-results.png") == grid_size(6)
    capsys.readouterr()
    assert run_main(show, digits_run, "confused", "-n", "3") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    run = load_trained(digits_run)
    confusion = evaluation.evaluate(run, "valid").confusion()
    names = run.model.class_names
    off_diagonal = sorted(
        ((int(confusion[i, j]), names[i], names[j]) for i in range(5) for j in range(5) if i != j and confusion[i, j] > 0),
        key=lambda c: -c[0],
    )
    assert [int(r[2]) for r in rows] == [c for c, _, _ in off_diagonal][:3]
    assert all(int(confusion[names.index(a), names.index(p)]) == int(c) for a, p, c in rows)
    assert png_size(digits_run / "show-confused.png") == (600, int(100 + 35 * len(rows)))


def test_show_never_replaces_a_picture_unasked(digits_run, tmp_path, capsys):
    out = tmp_path / "mine.png"
    out.write_bytes(b"keep")
    assert run_main(show, digits_run, "batch", "--out", out) == 2
    assert out.read_bytes() == b"keep"
    assert "exists; choose another file, or add --force" in capsys.readouterr().err
    assert run_main(show, digits_run, "batch", "-n", "1", "--out", out, "--force") == 0
    assert png_size(out) == grid_size(1)


def test_show_ratings_biases_and_a_users_ratings_beside_the_predictions(ratings_run, capsys):
    assert run_main(show, ratings_run, "biases", "-n", "5") == 0
    printed = capsys.readouterr().out.splitlines()
    trained = load_trained(ratings_run)
    data = trained.datamodule
    seen = np.flatnonzero(data.item_counts()[1:] > 0) + 1
    bias = trained.model.item_bias.weight.detach().numpy()[seen, 0]
    lowest = [data.item_names()[k] for k in seen[np.argsort(bias, kind="stable")[:5]]]
    assert [line.split(None, 1)[1] for line in printed[1:6]] == lowest
    assert png_size(ratings_run / "show-biases.png") == (1100, int(120 + 32 * 5))

    user = int(data.user_ids[int(data.val_set.users[0]) - 1])
    assert run_main(show, ratings_run, "results", "--user", user) == 0
    rows = [line.split(None, 2) for line in capsys.readouterr().out.splitlines()[2:]]
    u = data.trained_index("user", user)
    mine = data.val_set.users == u
    with torch.no_grad():
        expected = trained.model(data.val_set.users[mine], data.val_set.items[mine])
    by_title = {data.item_names()[i]: (r, p) for i, r, p in zip(data.val_set.items[mine].tolist(), data.val_set.ratings[mine].tolist(), expected.tolist())}
    assert len(rows) == min(9, int(mine.sum()))
    for rating, predicted, title in rows:
        assert float(rating) == pytest.approx(by_title[title][0], abs=5e-3)
        assert float(predicted) == pytest.approx(by_title[title][1], abs=5e-4)
    assert png_size(ratings_run / "show-results.png") == (700, int(160 + 32 * len(rows)))


def test_show_refuses_a_view_of_the_other_kind_in_one_line(ratings_run, digits_run, capsys):
    assert run_main(show, ratings_run, "confused") == 1
    assert capsys.readouterr().err.strip().endswith("is a rating run; its views are batch, results, biases")
    assert run_main(show, digits_run, "biases") == 1
    assert capsys.readouterr().err.strip().endswith("is an image run; its views are batch, results, confused")


def test_show_batch_of_a_ratings_run_prints_the_first_training_batch(ratings_run, capsys):
    assert run_main(show, ratings_run, "batch", "-n", "4") == 0
    rows = [line.split(None, 3) for line in capsys.readouterr().out.splitlines()[1:]]
    trained = load_trained(ratings_run)
    users, items, ratings = training_batch(trained)
    data = trained.datamodule
    assert [[int(u), int(i), float(r)] for u, i, r, _ in rows] == [
        [int(data.user_ids[u - 1]), int(data.item_ids[i - 1]), pytest.approx(r, abs=5e-3)]
        for u, i, r in zip(users[:4].tolist(), items[:4].tolist(), ratings[:4].tolist())
    ]
    assert not (ratings_run / "show-batch.png").exists(), "a table, no picture"
