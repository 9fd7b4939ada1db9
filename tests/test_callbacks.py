"""The ``callbacks=`` group and ``checkpoint.*``: Lightning callbacks as presets, checkpoints as config."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from pytorch_lightning.callbacks import EarlyStopping, ModelSummary, TQDMProgressBar

from stagetune.app import conf_dir
from stagetune.config import validate
from stagetune.engine.progress import EpochLines, StageProgressBar
from stagetune.errors import ConfigError
from stagetune.runs.assemble import run_callbacks, run_trainer
from stagetune.runs.run import train
from stagetune.runs.rundir import RunDir
from tests.helpers.cli import ROOT

TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny", "logger=none"]


def run_config(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return validate(compose("train", overrides=list(overrides)))


def kinds(cfg) -> list[type]:
    """The callbacks ``callbacks:`` added, after those every run has (``callbacks=none`` has only those)."""
    own = len(run_callbacks(run_config(*TINY, "callbacks=none"), []))
    return [type(c) for c in run_callbacks(cfg, [])][own:]


def test_default_prints_the_model_summary_and_none_adds_nothing():
    assert kinds(run_config(*TINY)) == [ModelSummary]
    assert kinds(run_config(*TINY, "callbacks=none")) == []
    assert kinds(run_config(*TINY, "~callbacks.model_summary")) == [], "one entry of a preset can be removed"


@pytest.mark.parametrize(("experiment", "metric", "mode"), [("digits_transfer", "val/acc", "max"), ("ratings_synthetic", "val/rmse", "min")])
def test_early_stopping_watches_the_experiments_metric_in_its_mode(experiment, metric, mode):
    cfg = run_config(f"experiment={experiment}", "callbacks=early_stopping", "callbacks.early_stopping.patience=2")
    (stop,) = [c for c in run_callbacks(cfg, []) if isinstance(c, EarlyStopping)]
    assert (stop.monitor, stop.mode, stop.patience) == (metric, mode, 2)


def test_rich_without_the_package_is_one_config_error_line():
    try:
        import rich  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"callbacks\.rich_progress_bar.*stagetune\[rich\]"):
            run_callbacks(run_config(*TINY, "callbacks=rich"), [])
    else:
        assert "RichProgressBar" in {type(c).__name__ for c in run_callbacks(run_config(*TINY, "callbacks=rich"), [])}


def test_a_progress_bar_from_the_config_replaces_the_stage_bar(tmp_path):
    cfg = run_config(*TINY, "trainer.enable_progress_bar=true", "+callbacks.bar._target_=pytorch_lightning.callbacks.TQDMProgressBar")
    bars = [c for c in run_trainer(cfg, RunDir(tmp_path)).callbacks if isinstance(c, TQDMProgressBar)]
    assert [type(b) for b in bars] == [TQDMProgressBar]
    default = [c for c in run_trainer(run_config(*TINY, "trainer.enable_progress_bar=true"), RunDir(tmp_path / "b")).callbacks]
    assert any(isinstance(c, (StageProgressBar, EpochLines)) for c in default), "the stage's own bar (or its log-file lines) by default"


def test_checkpoint_settings_keep_the_top_k_best(tmp_path):
    cfg = run_config(*TINY, "checkpoint.save_top_k=2", "callbacks=none")
    train(cfg, tmp_path / "run")
    best = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 2 and (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(("key", "value"), [("save_top_k", 0), ("every_n_epochs", 0)])
def test_bad_checkpoint_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"checkpoint\.{key}"):
        run_config(*TINY, f"checkpoint.{key}={value}")
