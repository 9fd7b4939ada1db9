"""Helpers for the vision tests: a short Trainer under a plan, tiny image trees on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from PIL import Image

from stagetune.engine.plan import Plan, Stage, StagePlan
from stagetune.vision.data import DigitsData
from tests.tiny import quiet_trainer

ROOT = Path(__file__).resolve().parents[2]


def fit(
    model: pl.LightningModule,
    data: pl.LightningDataModule,
    *stages: Stage,
    batches: int | None = 2,
    callbacks: tuple[pl.Callback, ...] = (),
    **kwargs,
) -> pl.Trainer:
    """Fit ``model`` through ``stages`` with a few batches per epoch (all with ``batches=None``)."""
    plan = Plan(stages={s.name: s for s in stages})
    trainer = quiet_trainer(
        max_epochs=plan.total_epochs,
        callbacks=[StagePlan(plan), *callbacks],
        limit_train_batches=batches,
        num_sanity_val_steps=0,
        accelerator="cpu",
        **kwargs,
    )
    trainer.fit(model, datamodule=data)
    return trainer


@pytest.fixture
def digits() -> DigitsData:
    """Three digit classes at 16 px in batches of 8: enough to train a step in well under a second."""
    return DigitsData(size=16, classes=[1, 4, 7], batch_size=8)


def write_image(path: Path, seed: int, size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def image_tree(root: Path, splits: dict[str, dict[str, int]]) -> Path:
    """``root/<split>/<class>/<k>.jpg`` with the given number of random images per class."""
    seed = 0
    for split, classes in splits.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                seed += 1
                write_image(root / split / name / f"{k}.jpg", seed)
    return root


def pets_tree(root: Path, breeds: tuple[str, ...] = ("Abyssinian", "great_pyrenees", "pug"), per_breed: int = 6) -> Path:
    """A miniature Oxford-IIIT Pet in torchvision's layout: images/ and annotations/{trainval,test}.txt."""
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for label, breed in enumerate(breeds, start=1):
        species = 1 if breed[0].isupper() else 2
        for k in range(1, per_breed + 1):
            image_id = f"{breed}_{k}"
            write_image(base / "images" / f"{image_id}.jpg", seed=label * 100 + k)
            split = "test" if k > per_breed - 2 else "trainval"
            lines[split].append(f"{image_id} {label} {species} {k}")
    for split, rows in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m stagetune ARGS`` as a user runs it, in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "stagetune", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
