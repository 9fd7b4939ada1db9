"""Choose on valid, report test once: the test labels change nothing but the test numbers."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir
from stagetune.collab.models import DotBias
from stagetune.collab.movielens import MovieLens
from stagetune.runs.run import train
from tests.helpers.ratings import write_u_data


def run(tmp_path, name: str, test_shift: int) -> dict:
    write_u_data(tmp_path / name / "data", test_shift)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "experiment=movielens_fastai",
                f"data.path={tmp_path / name / 'data'}",
                "data.split=u1",
                "plan.stages.all.epochs=3",
                "trainer.enable_progress_bar=false",
                "logger=csv",
            ],
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, tmp_path / name / "run")
    finally:
        torch.set_num_threads(threads)
    return json.loads((tmp_path / name / "run" / "metrics.json").read_text())


def test_changing_the_test_labels_changes_neither_the_choice_nor_any_metric_but_test(tmp_path):
    a, b = run(tmp_path, "a", 0), run(tmp_path, "b", -2)
    assert set(a["valid"]) == {"val/loss", "val/rmse", "val/mae"} and set(a["test"]) == {"test/loss", "test/rmse", "test/mae"}
    assert a["test"]["test/rmse"] != pytest.approx(b["test"]["test/rmse"], abs=0.1)
    for key in ("metric", "final", "valid", "train_eval", "stages", "epochs", "global_step"):
        assert a[key] == b[key], key
    chosen = [m["best"]["checkpoint"].rsplit("/", 1)[-1] for m in (a, b)]
    assert chosen[0] == chosen[1] and chosen[0].startswith("best-epoch")
    assert a["valid"]["val/rmse"] == pytest.approx(a["metric"]["best"])


def test_train_eval_rmse_is_the_chosen_checkpoint_in_eval_mode_on_the_training_part(tmp_path):
    record = run(tmp_path, "a", 0)
    assert set(record["train_eval"]) == {"train_eval/loss", "train_eval/rmse", "train_eval/mae"}
    model = DotBias.load_from_checkpoint(tmp_path / "a" / "run" / record["best"]["checkpoint"], weights_only=True).eval()
    data = MovieLens(path=str(tmp_path / "a" / "data"), split="u1", y_range=(0.0, 5.5), batch_size=64)
    train_part = data.parts()[0]
    with torch.no_grad():
        pred = model(train_part.users, train_part.items)
    rmse = float(torch.sqrt(torch.mean((pred - train_part.ratings) ** 2)))
    assert record["train_eval"]["train_eval/rmse"] == pytest.approx(rmse, rel=1e-5)
    assert rmse < record["valid"]["val/rmse"]  # it fits what it learned from better than what it did not
