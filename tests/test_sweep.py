"""A 2 x 2 wd x lr sweep end to end: run directories, summary, HParams, a live TensorBoard."""

from __future__ import annotations

import csv
import json
import math
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata as hparams_metadata

from stagetune.runs.rundir import RunDir
from tests.helpers.sweeps import TINY, run_module

GRID = {"optim.wd": ["0", "0.1"], "plan.lr": ["0.001", "0.01"]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    out = root / "sweep"
    done = run_module("stagetune", "-m", *TINY, "optim.wd=0,0.1", "plan.lr=0.001,0.01", f"hydra.sweep.dir={out}", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep report:" in done.stderr
    return out


def jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))


def job_values(job: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in yaml.safe_load((job / "overrides.yaml").read_text()))


def test_four_jobs_four_run_directories_and_a_summary_row_each(sweep):
    dirs = jobs(sweep)
    assert [d.name for d in dirs] == ["0", "1", "2", "3"]
    seen = set()
    for d in dirs:
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        assert (d / "checkpoints" / "last.ckpt").exists()
        values = job_values(d)
        seen.add((values["optim.wd"], values["plan.lr"]))
    assert seen == {(wd, lr) for wd in GRID["optim.wd"] for lr in GRID["plan.lr"]}

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 4
    for row in rows:
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert row["status"] == "completed"
        assert (row["optim.wd"], row["plan.lr"]) == (job_values(sweep / row["job"])["optim.wd"], job_values(sweep / row["job"])["plan.lr"])
        assert float(row["val/rmse best"]) == pytest.approx(metrics["metric"]["best"], rel=1e-3)
        assert float(row["time_s"]) > 0
    table = [line for line in (sweep / "summary.md").read_text().splitlines() if line.startswith("| ") and "completed" in line]
    assert len(table) == 4
    best = min(rows, key=lambda r: float(r["val/rmse best"]))
    assert f"in job {best['job']} " in (sweep / "summary.md").read_text()
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_job_is_named_in_tensorboard_by_what_the_sweep_changed(sweep):
    for job in jobs(sweep):
        values = job_values(job)
        label = f"optim.wd={values['optim.wd']},plan.lr={values['plan.lr']}"
        assert {p.parent for p in job.rglob("events.out.tfevents.*")} == {job / "tensorboard" / label}
        assert json.loads((job / "run.json").read_text())["swept"] == ["optim.wd", "plan.lr"]


def test_hparams_in_each_run_hold_its_swept_values_and_real_final_metrics(sweep):
    for job in jobs(sweep):
        events = EventAccumulator(str(RunDir(job).tensorboard)).Reload()
        content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
        hp = {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in start.hparams.items()}
        values = job_values(job)
        assert hp == {"optim.wd": pytest.approx(float(values["optim.wd"])), "plan.lr": pytest.approx(float(values["plan.lr"])), "status": "completed"}, (
            "the swept keys; constants left out"
        )
        experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
        assert [m.name.tag for m in experiment.metric_infos] == ["hp/best", "hp/test", "hp/last"]

        record = json.loads((job / "metrics.json").read_text())
        best = events.Scalars("hp/best")[-1].value
        last = events.Scalars("hp/last")[-1].value
        assert best == pytest.approx(record["metric"]["best"], rel=1e-5) and best != -1
        assert last == pytest.approx(record["metric"]["last"], rel=1e-5)
        assert best == pytest.approx(min(e.value for e in events.Scalars("val/rmse")), rel=1e-5)
        assert events.Scalars("hp/test")[-1].value == pytest.approx(record["test"]["test/rmse"], rel=1e-5), "test of the chosen checkpoint"
        written = [v.tag for f in job.rglob("events.out.tfevents.*") for e in EventFileLoader(str(f)).Load() for v in e.summary.value]
        assert written.count("hp/test") == 1 and written.count(hparams_metadata.SESSION_START_INFO_TAG) == 1, (
            "one write, so the order TensorBoard reads a run's event files in cannot hide the real values"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_tensorboard_server_lists_every_job_as_a_run_with_its_scalars(sweep):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        runs, deadline = [], time.time() + 60
        while time.time() < deadline:
            try:
                runs = get_json(f"{base}/data/runs")
            except OSError:
                runs = []
            if len(runs) == 4:
                break
            time.sleep(0.5)
        names = {f"{job.name}/tensorboard/{RunDir(job).tensorboard.name}" for job in jobs(sweep)}
        assert set(runs) == names and all("optim.wd=" in run and ",plan.lr=" in run for run in runs)
        tags = get_json(f"{base}/data/plugin/scalars/tags")
        for run in runs:
            assert {"val/rmse", "val/loss", "train/loss_step", "lr/embeddings", "lr/biases", "stage", "hp/best", "hp/test", "hp/last"} <= set(tags[run])
        series = get_json(f"{base}/data/plugin/scalars/scalars?run={urllib.parse.quote(sorted(runs)[0])}&tag=hp/best")
        assert math.isfinite(series[-1][2]) and series[-1][2] > 0
        layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
        (category,) = layout["category"]
        charts = {chart["title"]: chart["multiline"]["tag"] for chart in category["chart"]}
        assert charts["learning rate of each layer group"] == ["^lr/"], "one chart overlays every group's LR"
        assert charts["stage (steps are the stage boundaries)"] == ["^stage$"]
        assert charts["loss: train and valid"] == ["^train/loss", "^val/loss$"]
    finally:
        server.terminate()
        server.wait(timeout=30)
