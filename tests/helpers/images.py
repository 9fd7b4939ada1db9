"""Tiny image trees on disk: class folders, a miniature Oxford-IIIT Pet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


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
