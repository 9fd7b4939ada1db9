"""The command line end to end: a run directory with everything a user looks for."""

import json
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.cli import run_cli

SMALL = [
    "experiment=ratings_synthetic",
    "data.n_ratings=3000",
    "data.n_users=60",
    "data.n_items=80",
    "data.batch_size=64",
    "plan.stages.all.epochs=2",
    "trainer.enable_progress_bar=false",
]


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("outputs/ratings_synthetic/*/metrics.json"))


def test_two_runs_write_two_complete_run_directories_with_identical_metrics(tmp_path):
    first = run_cli(*SMALL, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_cli(*SMALL, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 2, "a second run never writes over the first"
    run = dirs[0]

    assert (run / "checkpoints" / "last.ckpt").exists()
    assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["experiment"] == "ratings_synthetic" and config["plan"]["stages"]["all"]["epochs"] == 2
    assert yaml.safe_load((run / "overrides.yaml").read_text()) == SMALL
    info = json.loads((run / "run.json").read_text())
    assert info["packages"]["torch"] == "2.14.1" and "git" in info and info["argv"]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["metric"]["name"] == "val/rmse" and metrics["metric"]["best"] > 0
    assert metrics["stages"] == [
        {
            "stage": "all",
            "index": 0,
            "first_epoch": 0,
            "epochs": 2,
            "trainable_groups": ["embeddings", "biases"],
            "lr": {"embeddings": 1e-2, "biases": 1e-2},
            "wd": 1.0,
            "wd_kind": "decoupled",
            "schedule": "one_cycle",
        }
    ]
    assert f"run directory: {run}" in first.stderr
    assert "tensorboard --logdir" in first.stderr

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lr/embeddings", "lr/biases", "stage", "train/loss_step", "val/loss", "val/rmse"} <= tags
    every = config["trainer"]["log_every_n_steps"]
    steps = [e.step for e in events.Scalars("lr/embeddings")]
    assert steps == list(range(0, metrics["global_step"], every)), "the LR of every group, every n steps"
    assert [e.step for e in events.Scalars("train/loss_step")] == steps
    assert metrics["global_step"] > 20

    other = json.loads((dirs[1] / "metrics.json").read_text())
    assert other["final"] == metrics["final"], "same seed and config give the same metrics"


def test_cfg_job_prints_the_composed_config(tmp_path):
    out = run_cli("--cfg", "job", "experiment=ratings_synthetic", "optim.wd=0.2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["optim"]["wd"] == 0.2 and cfg["experiment"] == "ratings_synthetic"
    assert not (tmp_path / "outputs").exists()
