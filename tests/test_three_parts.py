"""Every shipped experiment's data has train, valid and test, disjoint and non-empty, so every
run's metrics.json reports test from the checkpoint valid chose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stagetune.build import build
from stagetune.collab.data import UNKNOWN
from stagetune.curvefit.data import CurvePoints
from stagetune.vision.data import ImageDataModule, TensorImages, Transformed
from tests.helpers.configs import EXPERIMENTS, composed
from tests.helpers.images import image_tree, pets_tree

SRC = Path(__file__).resolve().parents[1] / "src"

# Sizes small enough that set-up takes a moment; the parts are made the way the full sizes are.
TINY = {
    "ratings_synthetic": ["data.n_users=40", "data.n_items=30", "data.n_ratings=400"],
    "digits_transfer": ["data.size=8"],
    "digits_scratch": ["data.size=8"],
    "pets": ["data.size=32"],
}
CASES = [(name, name) for name in EXPERIMENTS] + [("image_folder", "pets")]


def example_keys(data, part: str) -> list:
    """What tells one example of ``part`` from another: a file, a point, a (user, item) cell, a picture."""
    if isinstance(data, CurvePoints):
        return getattr(data, f"x_{part}").tolist()
    if isinstance(data, ImageDataModule):
        ds = data.splits[part]
        if isinstance(ds, TensorImages):
            return [bytes(image.numpy().tobytes()) for image in ds.images]
        if isinstance(ds, Transformed):
            base = ds.dataset
            files = [str(p) for p in base._images] if hasattr(base, "_images") else [p for p, _ in base.samples]
            return [files[k] for k in ds.indices]
        return [p for p, _ in ds.samples]
    ds = getattr(data, f"{part}_set")
    cells = list(zip(ds.users.tolist(), ds.items.tolist()))
    # a user or item training never saw is one id (UNKNOWN) in every part: those cells cannot be told apart
    return [cell for cell in cells if UNKNOWN not in cell]


@pytest.mark.parametrize(("name", "experiment"), CASES, ids=[c[0] for c in CASES])
def test_every_experiment_has_three_disjoint_parts(tmp_path, name, experiment):
    overrides = [f"experiment={experiment}", *TINY.get(name, [])]
    if experiment == "pets":
        overrides.append(f"data.root={pets_tree(tmp_path)}")
    if name == "image_folder":
        root = image_tree(tmp_path / "imgs", {"train": {"cat": 6, "dog": 6}, "valid": {"cat": 1, "dog": 1}})
        overrides[-1:] = ["data=image_folder", f"data.root={root}", "data.size=32"]
    data = build(composed(*overrides).data)
    data.setup("fit")
    assert data.has_test
    parts = {part: example_keys(data, part) for part in ("train", "val", "test")}
    assert all(parts.values()), {part: len(keys) for part, keys in parts.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(parts[a]) & set(parts[b]), f"{a} and {b} share examples"


def run(run_dir: Path, *overrides: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "stagetune", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((run_dir / "metrics.json").read_text())


def test_sgd_line_reports_test_loss_of_the_chosen_line(tmp_path):
    metrics = run(tmp_path, "experiment=sgd_line", "plan.stages.all.epochs=2", "model.frames=4")
    assert set(metrics["valid"]) >= {"val/loss"} and set(metrics["test"]) == {"test/loss"}
    assert 0 <= metrics["test"]["test/loss"] < 10


def test_universal_approx_reports_test_mse_per_width(tmp_path):
    metrics = run(tmp_path, "experiment=universal_approx", "model.widths=[2,8]", "plan.stages.all.epochs=2", "data.n_train=128")
    assert set(metrics["test"]) == {"test/loss", "test/mse/w2", "test/mse/w8"}
    test = metrics["test"]
    assert test["test/loss"] == pytest.approx(test["test/mse/w2"] + test["test/mse/w8"], rel=1e-5)
    assert np.isfinite(metrics["valid"]["val/loss"])
