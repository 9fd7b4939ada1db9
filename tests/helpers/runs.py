"""Trained runs made in-process, and the commands' ``main(argv)`` called as the console calls them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir
from stagetune.runs.run import train

QUIET = ["trainer.enable_progress_bar=false", "logger=none"]


def make_run(path: Path, *overrides: str) -> Path:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *QUIET])
    train(cfg, path)
    return path


def run_main(module, *argv: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        module.main([str(a) for a in argv])
    return exit_.value.code


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))
