"""The two curve-fitting experiments through the real command line, at a reduced budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stagetune.curvefit.data import CurvePoints
from stagetune.curvefit.line import frame_indices
from stagetune.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(run_dir: Path, *overrides: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "stagetune", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]
    done = subprocess.run([*cmd, *overrides], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((run_dir / "metrics.json").read_text())


def tensorboard_images(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return set(events.Tags()["images"])


def test_sgd_line_fits_the_line_and_draws_it(tmp_path):
    metrics = run_cli(tmp_path, "experiment=sgd_line", "plan.stages.all.epochs=8", "model.frames=10")
    data = metrics["data"]
    assert metrics["final"]["fit/a"] == pytest.approx(data["true_a"], abs=0.15)
    assert metrics["final"]["fit/b"] == pytest.approx(data["true_b"], abs=0.15)
    assert metrics["final"]["fit/a"] == pytest.approx(data["least_squares_a"], abs=0.1)
    assert metrics["stages"][0]["wd_kind"] == "l2" and metrics["stages"][0]["schedule"] == "constant"
    gif = Image.open(tmp_path / "sgd_line.gif")
    assert gif.n_frames >= 5
    assert Image.open(tmp_path / "sgd_line.png").size[0] > 0
    assert {"sgd_line/final", "sgd_line/steps"} <= tensorboard_images(tmp_path)


def test_universal_approx_wider_nets_fit_sin_better(tmp_path):
    metrics = run_cli(tmp_path, "experiment=universal_approx", "model.widths=[2,32]", "plan.stages.all.epochs=10", "data.n_train=512")
    final = metrics["final"]
    assert final["val/mse/w32"] < final["val/mse/w2"] / 5
    assert final["val/mse/w32"] < 0.02
    assert Image.open(tmp_path / "universal_approx.png").size[0] > 0
    assert "universal_approx/final" in tensorboard_images(tmp_path)


def test_affine_points_scatter_around_the_line_and_validate_on_it():
    data = CurvePoints(function="affine", a=2.0, b=1.0, n_train=2000, noise=0.5)
    residuals = data.y_train - (2.0 * data.x_train + 1.0)
    assert residuals.std() == pytest.approx(0.5, rel=0.05)
    assert np.array_equal(data.y_val, 2.0 * data.x_val + 1.0)
    a, b = data.least_squares_line()
    assert (a, b) == pytest.approx((2.0, 1.0), abs=0.05)


def test_curve_points_test_part_is_seeded_noise_free_and_off_the_valid_grid():
    data = CurvePoints(function="affine", a=2.0, b=1.0, n_train=50, n_valid=40, n_test=30, noise=0.5, seed=7)
    assert len(data.x_test) == 30 and np.array_equal(data.y_test, 2.0 * data.x_test + 1.0)
    assert not set(data.x_test) & (set(data.x_val) | set(data.x_train))
    assert data.has_test and len(data.test_dataloader().dataset) == 30
    again = CurvePoints(function="affine", n_train=50, n_valid=40, n_test=30, noise=0.5, seed=7)
    assert np.array_equal(again.x_test, data.x_test) and np.array_equal(again.x_train, data.x_train)


def test_unknown_function_is_a_config_error():
    with pytest.raises(ConfigError, match="data.function='cubic': allowed: affine, sin"):
        CurvePoints(function="cubic")


def test_frames_are_dense_early_and_include_both_ends():
    frames = frame_indices(199, 10)
    assert frames[0] == 0 and frames[-1] == 199
    assert frames[1] - frames[0] < frames[-1] - frames[-2]
