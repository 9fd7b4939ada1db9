"""The ``paths=`` group: absolute roots, found from any working directory, so the cache is shared."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from stagetune.app import _writable, conf_dir, project_root, user_cache
from stagetune.config import validate
from stagetune.vision.source import source_key, source_weights


def run_config(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture
def no_path_env(monkeypatch):
    for name in ("STAGETUNE_ROOT", "STAGETUNE_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)


def test_the_project_root_is_found_from_a_subdirectory(tmp_path, monkeypatch, no_path_env):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "train.yaml").write_text("defaults: []\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "notebooks" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "notebooks" / "deep")
    assert project_root() == str(tmp_path.resolve())
    monkeypatch.setenv("STAGETUNE_ROOT", str(tmp_path / "elsewhere"))
    assert project_root() == str((tmp_path / "elsewhere").resolve())


def test_outside_a_project_the_root_is_the_working_directory(tmp_path, monkeypatch, no_path_env):
    monkeypatch.chdir(tmp_path)
    assert project_root() == str(tmp_path.resolve())


def test_the_cache_follows_stagetune_cache_then_xdg(tmp_path, monkeypatch, no_path_env):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache() == str(tmp_path / "xdg" / "stagetune")
    monkeypatch.setenv("STAGETUNE_CACHE", str(tmp_path / "mine"))
    assert user_cache() == str(tmp_path / "mine")


def test_every_path_is_absolute_and_the_source_cache_is_the_same_from_any_directory(tmp_path, monkeypatch, no_path_env):
    monkeypatch.setenv("STAGETUNE_CACHE", str(tmp_path / "cache"))
    seen = []
    for where in ("a", "b/c"):
        (tmp_path / where).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / where)
        run = validate(run_config("experiment=digits_transfer"))
        assert all(Path(p).is_absolute() for p in run.paths.values())
        seen.append(run.model.weights.cache_dir)
    assert seen == [str(tmp_path / "cache" / "sources")] * 2


def test_a_fresh_run_directory_lies_under_paths_outputs(tmp_path, monkeypatch, no_path_env):
    monkeypatch.chdir(tmp_path)
    cfg = run_config("experiment=ratings_synthetic", f"paths.outputs={tmp_path / 'runs'}", hydra=True)
    assert Path(cfg.hydra.run.dir).parent == tmp_path / "runs" / "ratings_synthetic"


def test_a_source_model_in_the_user_cache_is_reused_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGETUNE_CACHE", str(tmp_path / "cache"))
    settings = {"classes": [0, 1], "size": 8, "train_per_class": 2, "epochs": 1, "lr": 3e-3, "batch_size": 16, "head": "fastai", "seed": 0}
    cached = tmp_path / "cache" / "sources" / f"{source_key(settings)}.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"made by an earlier run")
    assert source_weights(**settings) == str(cached)


def test_workers_starting_at_once_into_one_sweep_directory_all_find_it_writable(tmp_path):
    """The workers of one Optuna study start together into one sweep directory; none may fail its write check."""
    target = tmp_path / "sweep"
    failures = []

    def check() -> None:
        for _ in range(300):
            try:
                _writable(str(target))
            except SystemExit as stop:
                failures.append(stop)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and list(target.iterdir()) == [], "every check passes and leaves no probe behind"
