"""Which ``_target_`` names a config read from a run directory may build.

A run directory is data that people copy and share, yet its ``config.yaml`` names Python callables
that Hydra would import and call: a shared directory could run any importable function. So
everything rebuilt from a run's config (predict, recommend, export, resume, a DDP worker started
by hand) builds only the targets the shipped configs use, and those the user trusts by name in
``STAGETUNE_TRUSTED_TARGETS``. Any other target, and any ``${...}`` interpolation (a resolver can
create directories or make new ``_target_`` nodes; a run's config is saved resolved, so it has
none), is refused by name before anything from the file is imported or called.

A fresh run's config is not checked: it comes from the user's own command line and ``conf/``, and
``+callbacks.NAME._target_=...`` names the user's own code.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from stagetune.errors import StagetuneError

TRUST_ENV = "STAGETUNE_TRUSTED_TARGETS"

# Every `_target_` in conf/ (the Hydra-only hydra/ group aside); tests/test_targets.py keeps it so.
ALLOWED = frozenset(
    {
        "pytorch_lightning.callbacks.EarlyStopping",
        "pytorch_lightning.callbacks.ModelSummary",
        "pytorch_lightning.callbacks.RichModelSummary",
        "pytorch_lightning.callbacks.RichProgressBar",
        "stagetune.collab.data.SyntheticRatings",
        "stagetune.collab.models.CollabNN",
        "stagetune.collab.models.DotBias",
        "stagetune.collab.models.SVDpp",
        "stagetune.collab.movielens.MovieLens",
        "stagetune.collab.ratings_file.RatingsFile",
        "stagetune.curvefit.data.CurvePoints",
        "stagetune.curvefit.line.LineFit",
        "stagetune.curvefit.relu_net.WidthLadder",
        "stagetune.vision.data.DigitsData",
        "stagetune.vision.data.ImageCSVData",
        "stagetune.vision.data.ImageFolderData",
        "stagetune.vision.data.PetsData",
        "stagetune.vision.models.ResNet34Classifier",
        "stagetune.vision.models.TorchvisionClassifier",
        "stagetune.vision.source.source_weights",
    }
)


class UntrustedConfig(StagetuneError):
    """A run's config names a target outside the allowlist, or holds an interpolation."""


def trusted_by_user() -> list[str]:
    """``STAGETUNE_TRUSTED_TARGETS``: targets (``pkg.mod.Class``) or modules (``pkg.mod``), comma-separated."""
    return [entry.strip() for entry in os.environ.get(TRUST_ENV, "").split(",") if entry.strip()]


def is_allowed(target: str, trusted: list[str]) -> bool:
    """Allowlisted, trusted by exact name, or a public name *defined in* a trusted module.

    A module entry does not trust what that module merely imports (``pkg.mod.os.system``).
    """
    if target in ALLOWED or target in trusted:
        return True
    module, _, name = target.rpartition(".")
    if module not in trusted or not name.isidentifier() or name.startswith("_"):
        return False
    try:
        obj = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return False
    return obj is not None and getattr(obj, "__module__", None) == module


def refusals(cfg: DictConfig | ListConfig, trusted: list[str] | None = None) -> list[str]:
    """What in ``cfg`` may not be built, each as ``key: why``; every node is looked at, none resolved."""
    trusted = trusted_by_user() if trusted is None else trusted
    found: list[str] = []

    def walk(node: DictConfig | ListConfig, prefix: str) -> None:
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            where = f"{prefix}.{key}" if prefix else str(key)
            if OmegaConf.is_interpolation(node, key):
                found.append(f"{where}: an interpolation")
                continue
            if OmegaConf.is_missing(node, key):
                continue
            value = node[key]
            if key == "_target_" and not (isinstance(value, str) and is_allowed(value, trusted)):
                found.append(f"{where}: {value}")
            elif isinstance(value, (DictConfig, ListConfig)):
                walk(value, where)

    walk(cfg, "")
    return found


def check_run_config(cfg: DictConfig, source: Path) -> DictConfig:
    """``cfg`` (read from ``source``) when every target in it is allowed; else one line naming each refusal."""
    refused = refusals(cfg)
    if refused:
        raise UntrustedConfig(
            f"{source}: refusing to build {'; '.join(refused)} (a run directory's config may name only "
            f"stagetune's own classes; if you trust this run's code, list it in {TRUST_ENV})"
        )
    return cfg
