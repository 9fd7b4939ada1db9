"""A trained model rebuilt from its run directory, for the commands that use it.

The run's own ``config.yaml`` rebuilds the datamodule (transforms, class names, id maps) and the
model exactly as training built them, except that the model's starting weights (``model.weights``)
are not loaded: the checkpoint's ``state_dict`` replaces every tensor anyway, and the source file
may be gone. Only allowlisted targets are built from the file (``runs/targets.py``); checkpoints
load with ``weights_only=True``. Every user error is one line on stderr.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from stagetune.build import build
from stagetune.engine.faults import check_checkpoint
from stagetune.errors import StagetuneError
from stagetune.runs.rundir import RunDir

CHECKPOINTS = ("best", "last")


@dataclass
class Trained:
    """A run's config, datamodule and model (in eval mode, on ``device``), and where its weights came from."""

    run: RunDir
    cfg: DictConfig
    datamodule: pl.LightningDataModule
    model: pl.LightningModule
    checkpoint: Path
    device: torch.device


def pick_device(name: str) -> torch.device:
    if name not in ("cpu", "cuda"):
        raise StagetuneError(f"--device {name}: use cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise StagetuneError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def without_start_weights(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose model starts from random weights: a checkpoint replaces every tensor anyway.

    Its source (``model.weights``: a file, or ``source_weights`` that trains and saves one) is then
    neither needed nor made again when a run is rebuilt or resumed.
    """
    cfg = copy.deepcopy(cfg)
    if "weights" in cfg.model:
        cfg.model.weights = None
    return cfg


def load_trained(path: str | Path, which: str = "best", device: str = "cpu", any_file: bool = False) -> Trained:
    """The model of run directory ``path`` with its ``best`` or ``last`` checkpoint's weights.

    With ``any_file``, ``which`` may also name a checkpoint file (an epoch's ``best-*.ckpt``);
    it is read the same way, ``weights_only=True``.
    """
    if which not in CHECKPOINTS and not (any_file and Path(which).is_file()):
        choices = "best, last or the path of a checkpoint file" if any_file else "best or last"
        raise StagetuneError(f"--ckpt {which}: use {choices}")
    target = pick_device(device)
    run = RunDir(path)
    if not run.path.is_dir():
        raise StagetuneError(f"{path}: no such run directory")
    try:
        cfg = run.checked_config()
        checkpoint = run.checkpoint(which) if which in CHECKPOINTS else Path(which).resolve()
    except FileNotFoundError as err:
        raise StagetuneError(str(err)) from None
    state = check_checkpoint(checkpoint, f"--ckpt {which}")
    if not isinstance(state.get("state_dict"), dict):
        raise StagetuneError(f"--ckpt {which}: {checkpoint} holds no model state_dict")
    datamodule = build(cfg.data)
    saved = state.get(type(datamodule).__qualname__)  # the datamodule's own state (ratings: the id maps), as Lightning saves it
    if saved:
        datamodule.load_state_dict(saved)
    model = build(without_start_weights(cfg).model, **datamodule.model_kwargs())
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:  # the config was edited after training, or the file is another run's
        detail = str(err).strip().splitlines()[0]
        raise StagetuneError(f"{checkpoint} does not fit the model in {run.path / 'config.yaml'} ({detail})") from None
    return Trained(run, cfg, datamodule, model.eval().to(target), checkpoint, target)
