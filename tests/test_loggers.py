"""The ``logger=`` group: each preset gives Lightning's own loggers, writing in the run directory."""

import builtins

import pytest
from omegaconf import OmegaConf
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from stagetune.errors import ConfigError
from stagetune.runs.assemble import run_logger
from stagetune.runs.rundir import RunDir


def _cfg(tensorboard=False, csv=False, mlflow=False):
    return OmegaConf.create({"experiment": "t", "logger": {"tensorboard": tensorboard, "csv": csv, "mlflow": {"enabled": mlflow}}})


def test_tensorboard_and_csv_together_write_under_the_run(tmp_path):
    loggers = run_logger(_cfg(tensorboard=True, csv=True), RunDir(tmp_path))
    assert [type(lg) for lg in loggers] == [TensorBoardLogger, CSVLogger]
    assert all(str(tmp_path) in lg.log_dir for lg in loggers)


def test_no_logger_is_false(tmp_path):
    assert run_logger(_cfg(), RunDir(tmp_path)) is False


def test_mlflow_without_the_extra_is_a_one_line_config_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(ConfigError, match=r"stagetune\[mlflow\]"):
        run_logger(_cfg(mlflow=True), RunDir(tmp_path))
