"""``logger=mlflow`` on MLflow 3: a local SQLite store by default, and a live tracking server, read back through MlflowClient."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.cli import ROOT, run_cli
from tests.services.conftest import unavailable

if importlib.util.find_spec("mlflow") is None:
    unavailable("mlflow is not installed: pip install 'stagetune[mlflow]'")
from mlflow.tracking import MlflowClient

TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny", "logger=mlflow", "logger.tensorboard=true"]
EPOCHS = 5  # tests/conf/plan/tiny.yaml: two frozen epochs, three unfrozen


def runs_under(client: MlflowClient, folder: Path) -> list:
    """The MLflow runs of the stagetune runs under ``folder`` (the server is shared by the tests)."""
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`stagetune.run_dir` LIKE '{folder}%'")


def test_a_run_logged_to_a_live_tracking_server_reads_back_through_mlflowclient(mlflow_server, tmp_path):
    out = run_cli(*TINY, f"logger.mlflow.tracking_uri={mlflow_server.url}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "run"
    record = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run.json").read_text())

    client = MlflowClient(mlflow_server.url)
    (run,) = runs_under(client, run_dir)
    assert run.info.status == "FINISHED" and run.info.run_id == record["mlflow"]["run_id"]
    assert run.data.tags["stagetune.run_dir"] == str(run_dir) and run.data.tags["stagetune.status"] == "completed"
    assert run.data.tags["mlflow.source.git.commit"] == info["git"]["commit"]
    params = run.data.params
    assert params["plan.stages.frozen.epochs"] == "2" and params["plan.stages.unfrozen.epochs"] == "3"
    assert float(params["plan.stages.frozen.lr_hi"]) == pytest.approx(1e-2)  # fine_tune at plan.lr=1e-2: 1e-2, then [lr/200, lr/2]
    assert float(params["plan.stages.unfrozen.lr_lo"]) == pytest.approx(5e-5) and float(params["plan.stages.unfrozen.lr_hi"]) == pytest.approx(5e-3)

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    # every scalar TensorBoard holds a value of (hp/test is its NaN placeholder: tiny data has no test split)
    scalars = {tag for tag in events.Tags()["scalars"] if any(math.isfinite(e.value) for e in events.Scalars(tag))}
    assert scalars and scalars <= set(run.data.metrics), sorted(scalars - set(run.data.metrics))  # TensorBoard's names
    for tag in sorted(scalars - {"hp/best", "hp/last"}):  # per step (train/loss_step, lr/*) and per epoch (val/loss, train/loss): the same series
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
        board = sorted((e.step, e.value) for e in events.Scalars(tag))
        assert [step for step, _ in history] == [step for step, _ in board], tag
        assert [value for _, value in history] == pytest.approx([value for _, value in board], rel=1e-6), tag
    assert len(events.Scalars("train/loss_step")) == 8 * EPOCHS and len(events.Scalars("train/loss")) == EPOCHS
    assert run.data.metrics["hp/best"] == pytest.approx(record["metric"]["best"])
    assert run.data.metrics["hp/last"] == pytest.approx(record["metric"]["last"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json"} <= artifacts
    saved = json.loads(Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))).read_text())
    assert saved["status"] == "completed" and saved["metric"] == record["metric"]


def test_a_sweep_is_one_mlflow_run_per_job_under_one_experiment(mlflow_server, tmp_path):
    out = run_cli("-m", *TINY, f"logger.mlflow.tracking_uri={mlflow_server.url}", "optim.wd=0,0.1", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = runs_under(MlflowClient(mlflow_server.url), tmp_path / "sweep")
    assert sorted(r.data.tags["stagetune.run_dir"] for r in runs) == [str(tmp_path / "sweep" / n) for n in ("0", "1")]
    assert len({r.info.experiment_id for r in runs}) == 1
    assert sorted(float(r.data.params["optim.wd"]) for r in runs) == [0.0, 0.1]  # the swept key, and the plan beside it
    assert all("plan.stages.unfrozen.epochs" in r.data.params for r in runs)
    assert sorted(r.info.run_name for r in runs) == ["optim.wd=0", "optim.wd=0.1"]


def test_by_default_the_store_is_sqlite_in_the_outputs_folder(tmp_path):
    outputs = tmp_path / "outputs"
    out = run_cli(*TINY, f"paths.outputs={outputs}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    (run,) = runs_under(client, outputs)
    assert run.info.status == "FINISHED" and "val/loss" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "metrics.json"}
    assert list((outputs / "mlartifacts").rglob("metrics.json")), "artifacts beside the database"
    assert not list(tmp_path.rglob("mlruns")), "no ./mlruns file store (MLflow 3 refuses it)"


def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    outputs, run_dir = tmp_path / "outputs", tmp_path / "outputs" / "run"
    stop = ["+callbacks.stop._target_=tests.tiny.SignalAt", "+callbacks.stop.step=20", f"+callbacks.stop.marker={tmp_path / 'stopped'}"]
    stopped = run_cli(*TINY, *stop, f"paths.outputs={outputs}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert stopped.returncode != 0 and json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted", stopped.stderr[-3000:]
    resumed = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    (run,) = runs_under(client, run_dir)
    assert run.data.tags["stagetune.status"] == "completed" and run.info.run_id == json.loads((run_dir / "metrics.json").read_text())["mlflow"]["run_id"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_step")]
    assert len(steps) == len(set(steps)) == 8 * EPOCHS, "every step once, before and after the stop, in one MLflow run"


def test_a_tracking_server_that_is_down_is_one_line_before_training(tmp_path):
    out = run_cli(*TINY, "logger.mlflow.tracking_uri=http://127.0.0.1:1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("stagetune:")]
    assert lines == [lines[0]] and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert lines[0].startswith("stagetune: config error: logger.mlflow.tracking_uri='http://127.0.0.1:1': cannot reach the MLflow server")
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing trained"
