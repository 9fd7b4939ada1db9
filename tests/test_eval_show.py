"""Looking at trained runs again: ``stagetune-eval`` and ``stagetune-show`` on two tiny real runs.

A digits_scratch run at 16 px (ten training images, 5% of the digits for valid and for test) and a
ratings_synthetic run on 1,000 ratings are trained once for the file; the commands run as ``main(argv)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from stagetune.commands import evaluate
from tests.test_predict import make_run, run_main


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    return make_run(
        tmp_path_factory.mktemp("digits"),
        "experiment=digits_scratch",
        "data.size=16",
        "data.train_per_class=2",
        "data.val_pct=0.05",
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
    assert json.loads((digits_run / f"eval-valid-{n}.json").read_text())["checkpoint"] == str(digits_run / "checkpoints" / "last.ckpt")


def test_eval_of_a_ratings_run_equals_its_metrics_and_draws_nothing(ratings_run):
    assert run_main(evaluate, ratings_run, "--split", "test") == 0
    recorded = json.loads((ratings_run / "metrics.json").read_text())["test"]
    result = json.loads((ratings_run / "eval-test.json").read_text())
    assert result["metrics"] == pytest.approx(recorded, abs=1e-6)
    assert result["pictures"] == [] and not list(ratings_run.glob("eval-test*.png"))


def test_eval_mistakes_are_one_line(digits_run, tmp_path, capsys):
    assert run_main(evaluate, digits_run, "--ckpt", "newest") == 1
    assert capsys.readouterr().err.strip() == (
        "stagetune-eval: error: --ckpt newest: use best, last or the path of a checkpoint file"
    )
    assert run_main(evaluate, tmp_path) == 1
    assert "is not a stagetune run directory" in capsys.readouterr().err
