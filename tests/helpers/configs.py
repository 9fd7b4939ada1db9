"""The shipped configs composed as Hydra composes them for a run."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=False)
