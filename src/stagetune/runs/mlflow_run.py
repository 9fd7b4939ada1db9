"""A run in MLflow (``logger=mlflow``): Lightning's MLFlowLogger, plus what a run records about itself.

The tracking store is ``logger.mlflow.tracking_uri``: a tracking server (``http://host:5000``) or
any store MLflow accepts; by default a SQLite database in the outputs folder
(``sqlite:///<paths.outputs>/mlflow.db``, artifacts beside it in ``mlartifacts/``), since MLflow 3
refuses its old ``./mlruns`` file store. Every run of an experiment is one MLflow run under the
MLflow experiment of the same name, so a sweep's jobs sit side by side.

What reaches MLflow: every metric Lightning logs, under the names TensorBoard shows (per step and
per epoch); the params (a sweep job's swept keys, and the plan: each stage's epochs, weight decay
and LR range, as in TensorBoard's HParams); tags naming the run directory, the experiment and the
git commit; at the end, as TensorBoard's HParams gets them, ``hp/best``, ``hp/last`` and
``hp/test`` and the status (a tag); once the run completes, its ``config.yaml`` and ``metrics.json``
as artifacts. A resumed run continues its MLflow run (the id is
kept in ``metrics.json``). A server that does not answer is one line naming the URI, before training.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.loggers import MLFlowLogger

from stagetune.errors import ConfigError
from stagetune.runs.rundir import CONFIG, METRICS, RUN_INFO, RunDir, read_json

KEY = "logger.mlflow.tracking_uri"
RUN_ID = "mlflow"  # metrics.json: {"run_id": ..., "tracking_uri": ...}, so a resume continues the same MLflow run


def tracking_uri(cfg: DictConfig) -> str:
    """``logger.mlflow.tracking_uri``, or the SQLite database in the outputs folder."""
    given = cfg.logger.mlflow.get("tracking_uri")
    if given:
        return str(given)
    return f"sqlite:///{Path(cfg.paths.outputs).resolve() / 'mlflow.db'}"


def shown_uri(uri: str) -> str:
    """The URI as messages print it: a password in it hidden."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def check_server(uri: str, timeout_s: float = 10) -> None:
    """A tracking server must answer its ``/health`` check now: MLflow's client would retry for minutes mid-run."""
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as answer:
            answer.read()
    except urllib.error.HTTPError as err:
        raise ConfigError(KEY, shown_uri(uri), f"the MLflow server answered {err.code} {err.reason} to /health") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(KEY, shown_uri(uri), f"cannot reach the MLflow server: {reason}") from None


class RunMLflowLogger(MLFlowLogger):
    """Lightning's MLflow logger for one stagetune run: tags at the start, the HParams summary, the record at the end."""

    def __init__(self, run: RunDir, tracking_uri: str, **kwargs: Any) -> None:
        super().__init__(tracking_uri=tracking_uri, **kwargs)
        self.run, self.uri = run, tracking_uri

    def summary(self, params: dict[str, Any], status: str, metrics: dict[str, float], step: int) -> None:
        """What TensorBoard's HParams table gets (:class:`~stagetune.runs.hparams.HParamsSummary`): params, the
        real final metrics, the status (a tag: a resumed run changes it, and params never change)."""
        self.log_hyperparams(params)
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
        if finite:
            self.log_metrics(finite, step=step)
        self.experiment.set_tag(self.run_id, "stagetune.status", status)
        self.run.update_metrics(**{RUN_ID: {"run_id": self.run_id, "tracking_uri": shown_uri(self.uri)}})

    def record(self) -> None:
        """A completed run's ``config.yaml`` and ``metrics.json``, as artifacts of its MLflow run."""
        for name in (CONFIG, METRICS):
            self.experiment.log_artifact(self.run_id, str(self.run.path / name))


def mlflow_logger(cfg: DictConfig, run: RunDir) -> RunMLflowLogger:
    """The run's MLflow logger (checked reachable); needs the ``mlflow`` extra."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("logger.mlflow.enabled", True, "needs mlflow: pip install 'stagetune[mlflow]'") from None
    uri = tracking_uri(cfg)
    check_server(uri)
    local = not cfg.logger.mlflow.get("tracking_uri")  # the default store keeps its artifacts beside it; a server has its own
    artifacts = (Path(cfg.paths.outputs).resolve() / "mlartifacts").as_uri() if local else None
    previous = run.metrics().get(RUN_ID, {}).get("run_id")  # a resumed run continues its MLflow run
    name = run.tensorboard.name if run.swept() else run.path.name
    tags = {"stagetune.run_dir": str(run.path), "stagetune.experiment": cfg.experiment}
    commit = (read_json(run.path / RUN_INFO) if (run.path / RUN_INFO).exists() else {}).get("git", {}).get("commit")
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return RunMLflowLogger(
        run, uri, experiment_name=cfg.experiment, run_name=name, run_id=previous, artifact_location=artifacts, tags=None if previous else tags
    )


def record_in_mlflow(trainer: pl.Trainer) -> None:
    """A completed run's record in MLflow, when it logs there (rank 0; after ``metrics.json`` is final)."""
    for logger in trainer.loggers:
        if isinstance(logger, RunMLflowLogger) and trainer.is_global_zero:
            logger.record()
