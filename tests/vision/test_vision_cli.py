"""The vision experiments through the command line, on reduced budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import stagetune.config  # noqa: F401  (registers the schema's defaults, which train.yaml composes from)
from stagetune.app import conf_dir
from tests.helpers.cli import NOISE, run_cli
from tests.helpers.images import pets_tree

QUIET = ["trainer.enable_progress_bar=false", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


def summary_rows(printed: str, name: str) -> list[list[str]]:
    """The rows of the end-of-run summary table for metric ``name``: name, valid, test."""
    return [line.split() for line in printed.splitlines() if line.split()[:1] == [name]]


def transfer_args(tmp_path: Path, run: str) -> list[str]:
    return [
        "experiment=digits_transfer",
        "data.train_per_class=2",
        "data.batch_size=10",
        "model.weights.train_per_class=4",
        "model.weights.epochs=1",
        f"model.weights.cache_dir={tmp_path / 'sources'}",
        "plan.stages.frozen.epochs=1",
        "plan.stages.unfrozen.epochs=1",
        *QUIET,
        f"hydra.run.dir={tmp_path / run}",
    ]


def test_default_transfer_run_makes_its_source_and_reports_the_target_test_accuracy(tmp_path):
    first = run_cli(*transfer_args(tmp_path, "first"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    sources = list((tmp_path / "sources").glob("*.pth"))
    assert len(sources) == 1
    source_info = json.loads(sources[0].with_suffix(".json").read_text())
    assert source_info["classes"] == [0, 1, 2, 3, 4] and source_info["size"] == 16

    run = tmp_path / "first"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert 0 <= metrics["test"]["test/acc"] <= 1
    assert metrics["test"]["test/error_rate"] == pytest.approx(1 - metrics["test"]["test/acc"])
    assert metrics["data"] == {"train_images": 10, "val_images": 179, "test_images": 179, "classes": 5}
    assert [s["stage"] for s in metrics["stages"]] == ["frozen", "unfrozen"]
    assert metrics["stages"][0]["trainable_groups"] == ["head"]
    assert metrics["stages"][1]["lr"] == pytest.approx({"body_early": 2e-4, "body_late": 2e-4 * 10**0.5, "head": 2e-3})
    assert summary_rows(first.stderr, "acc") == [["acc", f"{metrics['valid']['val/acc']:.4f}", f"{metrics['test']['test/acc']:.4f}"]]
    assert f"run directory: {run}" in first.stderr and "tensorboard --logdir" in first.stderr

    images = set(EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload().Tags()["images"])
    assert {"confusion_matrix/frozen", "confusion_matrix/unfrozen", "worst_predictions/frozen", "worst_predictions/unfrozen"} <= images
    pictures = {p.name for p in run.glob("stage-*.png")}
    assert pictures == {f"stage-{s}-{kind}.png" for s in ("frozen", "unfrozen") for kind in ("confusion", "top-losses")}


def compose_experiment(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}", *overrides])


def test_transfer_plan_is_the_recipe_chosen_on_validation():
    cfg = compose_experiment("digits_transfer")
    frozen, unfrozen = cfg.plan.stages.frozen, cfg.plan.stages.unfrozen
    assert (cfg.plan.lr, cfg.data.batch_size, cfg.data.train_per_class, cfg.data.augment) == (4e-3, 10, 10, False)
    assert (frozen.epochs, frozen.freeze_to, frozen.train_bn, [float(x) for x in frozen.lr], frozen.pct_start) == (4, -1, False, [4e-3], 0.99)
    assert (unfrozen.epochs, unfrozen.freeze_to, unfrozen.train_bn, unfrozen.pct_start, unfrozen.div) == (8, 0, True, 0.3, 5.0)
    assert [float(x) for x in unfrozen.lr] == pytest.approx([2e-4, 2e-3])


def test_scratch_trains_the_same_target_for_the_same_budget_from_random_weights():
    transfer, scratch = compose_experiment("digits_transfer"), compose_experiment("digits_scratch")
    assert scratch.model.weights is None and transfer.model.weights._target_.endswith("source_weights")
    assert scratch.data == transfer.data and scratch.plan == transfer.plan and scratch.optim == transfer.optim


def test_pets_experiment_is_fastai_lesson_one():
    cfg = compose_experiment("pets")
    assert (cfg.data.size, cfg.model.weights, cfg.model.head) == (224, "imagenet", "fastai")
    frozen, unfrozen = cfg.plan.stages.frozen, cfg.plan.stages.unfrozen
    assert (frozen.epochs, frozen.freeze_to, unfrozen.epochs, unfrozen.freeze_to) == (4, -1, 2, 0)
    assert list(unfrozen.lr) == [1e-6, 1e-4]


def test_pets_experiment_runs_on_a_tiny_pets_folder(tmp_path):
    root = pets_tree(tmp_path / "pets")
    result = run_cli(
        "experiment=pets",
        f"data.root={root}",
        "model.weights=null",
        "data.size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "plan.stages.frozen.epochs=1",
        "plan.stages.unfrozen.epochs=1",
        *QUIET,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"] == {"train_images": 10, "val_images": 2, "test_images": 6, "classes": 3}
    assert metrics["stages"][1]["lr"] == pytest.approx({"body_early": 1e-6, "body_late": 1e-5, "head": 1e-4})
    assert "test/acc" in metrics["test"]
    printed = result.stdout + result.stderr
    assert summary_rows(printed, "acc") == [["acc", f"{metrics['valid']['val/acc']:.4f}", f"{metrics['test']['test/acc']:.4f}"]]
    assert "Test metric" not in printed, "the test metrics are printed once, in the summary"
    assert not [noise for noise in NOISE if noise in printed], "no library noise on the terminal"


def test_missing_imagenet_weights_stop_the_run_with_one_line(tmp_path):
    root = pets_tree(tmp_path / "pets")
    result = run_cli("experiment=pets", f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 1
    assert "stagetune: error: model.weights=imagenet: the ImageNet weights are not in the cache" in result.stderr
    assert "Traceback" not in result.stderr
